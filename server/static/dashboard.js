// The workforce dashboard: filters → GET /v1/reports/performance → table, two bar charts
// (inline SVG drawn here), CSV download (the same call with format=csv).
'use strict';

(() => {
  const { el, duration, percent } = Backlight;
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const TIME_GROUPS = new Set(['day', 'hour', 'interval15']);
  const NO_GROUP = { team: '(no team)', person: '(no name)', queue: '(no queue)', device: '(unknown device)' };
  const GROUP_TITLE = { team: 'Team', person: 'Person', queue: 'Queue', device: 'Device', day: 'Day', hour: 'Hour', interval15: '15 minutes' };

  const filters = $('filters');
  const message = $('message');
  const status = $('status');
  const results = $('results');
  const showBtn = $('show');
  const csvBtn = $('csv');

  const askAgain = (text) => {
    Backlight.forgetKey();
    $('report').hidden = true;
    $('key-panel').hidden = false;
    $('sign-out').hidden = true;
    $('key-error').hidden = false;
    $('key-error').textContent = text;
    $('key-input').focus();
  };

  // ---- dates in a time zone -------------------------------------------------------------

  function validZone(tz) {
    try { new Intl.DateTimeFormat('en-US', { timeZone: tz }); return true; } catch (_) { return false; }
  }
  /** The wall-clock fields of `ms` in `tz`, as if they were UTC: gives the zone's offset. */
  function zoneOffset(ms, tz) {
    const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', {
      timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    }).formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
    const asUtc = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
    return asUtc - Math.floor(ms / 1000) * 1000;
  }
  /** Local midnight of `yyyy-mm-dd` in `tz`, in ms since the epoch. */
  function midnight(date, tz) {
    const [y, m, d] = date.split('-').map(Number);
    const guess = Date.UTC(y, m - 1, d);
    let t = guess - zoneOffset(guess, tz);
    t = guess - zoneOffset(t, tz); // again, for a DST change between the guess and the answer
    return t;
  }
  function today(tz) {
    const p = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' })
      .formatToParts(new Date()).map((x) => [x.type, x.value]));
    return `${p.year}-${p.month}-${p.day}`;
  }
  function addDays(date, n) {
    const [y, m, d] = date.split('-').map(Number);
    return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
  }

  // ---- defaults, from the address bar when given ----------------------------------------------

  (function defaults() {
    const url = new URLSearchParams(location.search);
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    $('tz').value = url.get('tz') || zone;
    const end = url.get('to') || today(validZone($('tz').value) ? $('tz').value : 'UTC');
    $('to').value = end;
    $('from').value = url.get('from') || addDays(end, -6);
    $('group_by').value = url.get('group_by') || 'team';
    $('team').value = url.get('team') || '';
    $('queue').value = url.get('queue') || '';
  })();

  function query(format) {
    const tz = $('tz').value.trim();
    if (!validZone(tz)) throw new Error(`“${tz}” is not a time zone this browser knows. Use a name like Europe/Berlin or UTC.`);
    const from = $('from').value;
    const to = $('to').value;
    if (!from || !to) throw new Error('Choose both dates.');
    if (to < from) throw new Error('“To” must be on or after “From”.');
    const p = new URLSearchParams({
      from: String(midnight(from, tz)),
      to: String(midnight(addDays(to, 1), tz)),
      group_by: $('group_by').value,
      tz,
    });
    for (const f of ['team', 'queue']) {
      const v = $(f).value.trim();
      if (v) p.set(f, v);
    }
    if (format) p.set('format', format);
    // Keep the filters in the address bar so a reload or a shared link shows the same report.
    const shown = new URLSearchParams({ from, to, tz, group_by: $('group_by').value });
    for (const f of ['team', 'queue']) if ($(f).value.trim()) shown.set(f, $(f).value.trim());
    window.history.replaceState(null, '', `/dashboard?${shown}`);
    return `/v1/reports/performance?${p}`;
  }

  function say(kind, text) {
    message.className = `notice ${kind}`;
    message.textContent = text;
    message.hidden = !text;
  }

  function explain(err) {
    if (err.status === 401) {
      askAgain('That access key was not accepted (it may have been revoked). Please enter it again.');
    } else if (err.status === 403 && err.code === 'wrong_role') {
      say('error', `This access key cannot open team reports: ${err.message}. Sign out and enter a workforce-manager (wfm) key, or ask your administrator for one.`);
    } else if (err.status === 403) {
      say('error', `Not allowed: ${err.message}`);
    } else if (err.status === 422) {
      say('error', `Please check the filters: ${err.message}`);
    } else {
      say('error', err.message);
    }
    status.textContent = '';
  }

  // ---- loading ----------------------------------------------------------------------------

  let generation = 0;

  async function load() {
    const mine = ++generation;
    say('', '');
    let path;
    try { path = query(''); } catch (e) { say('error', e.message); return; }
    showBtn.disabled = true;
    status.textContent = 'Loading the report…';
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          const report = await Backlight.getJson(path);
          if (mine !== generation) return;
          render(report);
          status.textContent = `Report loaded: ${report.rows.length} ${report.rows.length === 1 ? 'row' : 'rows'}.`;
          return;
        } catch (err) {
          // 503 while the period is prepared for reporting the first time: wait and retry.
          if (err.status === 503 && attempt < 5) {
            const wait = err.retryAfter || 5;
            status.textContent = `Preparing the data (${err.message}). Trying again in ${wait} s…`;
            await Backlight.sleep(wait * 1000);
            if (mine !== generation) return;
            continue;
          }
          // 429: this key has too many reports running on the server (issue 10's fair share).
          if (err.status === 429 && attempt < 5) {
            const wait = err.retryAfter || 1;
            status.textContent = `Other reports with this key are still running. Trying again in ${wait} s…`;
            await Backlight.sleep(wait * 1000);
            if (mine !== generation) return;
            continue;
          }
          throw err;
        }
      }
    } catch (err) {
      if (mine === generation) { results.hidden = true; explain(err); }
    } finally {
      if (mine === generation) showBtn.disabled = false;
    }
  }

  filters.addEventListener('submit', (e) => { e.preventDefault(); load(); });

  csvBtn.addEventListener('click', async () => {
    say('', '');
    let path;
    try { path = query('csv'); } catch (e) { say('error', e.message); return; }
    csvBtn.disabled = true;
    status.textContent = 'Preparing the CSV file…';
    try {
      const res = await Backlight.get(path, { accept: 'text/csv' });
      const blob = await res.blob();
      const cd = res.headers.get('Content-Disposition') || '';
      const name = (cd.match(/filename="([^"]+)"/) || [])[1] || 'backlight-report.csv';
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status.textContent = `Downloaded ${name}.`;
    } catch (err) {
      explain(err);
    } finally {
      csvBtn.disabled = false;
    }
  });

  // ---- rendering ----------------------------------------------------------------------------

  function label(row, groupBy) {
    if (TIME_GROUPS.has(groupBy)) return groupBy === 'day' ? row.group : row.group.replace('T', ' ').slice(0, 16);
    return row.group === '' ? NO_GROUP[groupBy] || '(none)' : row.group;
  }

  function sla(row) {
    if (!row.sla_items_with_due) return '—';
    return `${row.sla_items_met} of ${row.sla_items_with_due} (${percent(row.sla_compliance)})`;
  }

  function cells(row, groupBy, header) {
    const first = header ? el('th', { scope: 'row' }, label(row, groupBy)) : el('th', { scope: 'row' }, 'Total');
    return el('tr', {}, first,
      el('td', {}, row.items_handled),
      el('td', {}, duration(row.aht_mean_ms)),
      el('td', {}, duration(row.aht_median_ms)),
      el('td', {}, duration(row.productive_ms)),
      el('td', {}, percent(row.occupancy)),
      el('td', {}, sla(row)));
  }

  function render(report) {
    const g = report.group_by;
    $('group-col').textContent = GROUP_TITLE[g] || 'Group';
    const period = `${$('from').value} to ${$('to').value} (${report.tz})`;
    const filtersText = [report.team && `team ${report.team}`, report.queue && `queue ${report.queue}`].filter(Boolean).join(', ');
    $('table-caption').textContent = `By ${(GROUP_TITLE[g] || g).toLowerCase()}, ${period}${filtersText ? `, only ${filtersText}` : ''}`;
    const body = report.rows.length
      ? report.rows.map((r) => cells(r, g, true))
      : [el('tr', {}, el('td', { colspan: '7', class: 'empty' }, 'No work was recorded in this period.'))];
    $('table').tBodies[0].replaceChildren(...body);
    $('table').tFoot.replaceChildren(cells(report.totals, g, false));
    const b = report.backlog;
    $('backlog').textContent = b.count
      ? `${b.count} (average age ${duration(b.mean_age_ms)}, oldest ${duration(b.max_age_ms)})`
      : 'none';

    const time = TIME_GROUPS.has(g);
    chart($('aht-chart'), report.rows, g, time, (r) => r.aht_mean_ms, duration, 'bar', 'aht-title');
    chart($('occ-chart'), report.rows, g, time, (r) => r.occupancy, percent, 'bar occ', 'occ-title', 1);
    results.hidden = false;
  }

  function svg(tag, attrs, text) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text != null) n.textContent = text;
    return n;
  }

  /** Bars of `value(row)`; horizontal for named groups, columns over time for time groups. */
  function chart(box, rows, groupBy, time, value, fmt, cls, titleId, fixedMax) {
    const data = rows.map((r) => ({ name: label(r, groupBy), v: value(r) }));
    const known = data.filter((d) => d.v != null && Number.isFinite(d.v));
    if (!known.length) {
      box.replaceChildren(el('p', { class: 'empty' }, 'No data for this chart in this period.'));
      return;
    }
    const max = fixedMax || Math.max(...known.map((d) => d.v)) || 1;
    let root;
    if (!time) {
      const shown = data.slice(0, 30);
      const rowH = 26, labelW = 150, valueW = 90, W = 560, barW = W - labelW - valueW;
      root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${shown.length * rowH + 4}`, role: 'img', 'aria-labelledby': titleId });
      shown.forEach((d, i) => {
        const y = i * rowH + 2;
        const name = d.name.length > 20 ? `${d.name.slice(0, 19)}…` : d.name;
        root.append(svg('text', { x: labelW - 6, y: y + 17, 'text-anchor': 'end' }, name));
        const w = d.v == null ? 0 : Math.max(1, (d.v / max) * barW);
        const bar = svg('rect', { class: cls, x: labelW, y: y + 3, width: w, height: rowH - 8, rx: 2 });
        bar.append(svg('title', {}, `${d.name}: ${fmt(d.v)}`));
        root.append(bar);
        root.append(svg('text', { x: labelW + w + 6, y: y + 17 }, d.v == null ? '—' : fmt(d.v)));
      });
      if (data.length > shown.length) {
        box.replaceChildren(root, el('p', { class: 'sub' }, `The chart shows the first ${shown.length} of ${data.length} groups; the table has all.`));
        return;
      }
    } else {
      const W = 560, H = 180, left = 4, bottom = 22, top = 16;
      const colW = (W - left) / data.length;
      root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': titleId });
      root.append(svg('line', { class: 'axis', x1: left, x2: W, y1: H - bottom, y2: H - bottom }));
      data.forEach((d, i) => {
        if (d.v == null) return;
        const h = Math.max(1, (d.v / max) * (H - bottom - top));
        const bar = svg('rect', { class: cls, x: left + i * colW + colW * 0.1, y: H - bottom - h, width: Math.max(0.5, colW * 0.8), height: h });
        bar.append(svg('title', {}, `${d.name}: ${fmt(d.v)}`));
        root.append(bar);
      });
      const ticks = Math.min(data.length, 4);
      for (let t = 0; t < ticks; t++) {
        const i = Math.round((t * (data.length - 1)) / Math.max(1, ticks - 1));
        // Under its column: the first starts at the column's left edge, the last ends at its right.
        const [anchor, x] = t === 0 ? ['start', left + i * colW]
          : t === ticks - 1 ? ['end', left + (i + 1) * colW] : ['middle', left + (i + 0.5) * colW];
        root.append(svg('text', { x, y: H - 6, 'text-anchor': anchor }, data[i].name));
      }
      root.append(svg('text', { x: left, y: 12 }, `highest: ${fmt(Math.max(...known.map((d) => d.v)))}`));
    }
    box.replaceChildren(root);
  }

  // Last: everything above must exist before a stored key starts the first load.
  Backlight.keyPanel({
    panel: $('key-panel'),
    form: $('key-form'),
    input: $('key-input'),
    error: $('key-error'),
    content: $('report'),
    signOut: $('sign-out'),
    onKey: () => { $('from').focus(); load(); },
  });
})();
