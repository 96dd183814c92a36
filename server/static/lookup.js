// The contact-center lookup page: one search box, a status card, the history, live updates.
//
// Live updates read `GET /v1/items/{id}/events` (Server-Sent Events) with fetch and a streaming
// reader, because EventSource cannot send the Authorization header. The stream is parsed here
// (a few lines: blocks separated by a blank line, `event:` and `data:` fields, `:` comments)
// and reopened after `event: end`, a network error or a server restart.
'use strict';

(() => {
  const { el, when, ago, duration, clock } = Backlight;
  const $ = (id) => document.getElementById(id);

  const form = $('search-form');
  const q = $('q');
  const message = $('message');
  const choices = $('choices');
  const card = $('card');
  const historySection = $('history');
  const announce = $('announce');

  let current = null; // { id, controller, status }

  const STATUS = {
    waiting: { label: 'Waiting', cls: '' },
    in_progress: { label: 'Being worked on', cls: '' },
    paused: { label: 'Paused', cls: '' },
    completed: { label: 'Done', cls: 'done' },
  };
  const ACTION = {
    started: 'Work started',
    resumed: 'Work resumed',
    paused: 'Paused',
    completed: 'Completed',
    transferred: 'Handed on',
  };
  const PRESENCE = { active: 'Worked on it', idle: 'Away from the keyboard', locked: 'Screen locked' };

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = q.value.trim();
    if (!text) { say('info', 'Type a claim, order or case number first.'); q.focus(); return; }
    search(text);
  });

  function say(kind, text) {
    message.className = `notice ${kind}`;
    message.textContent = text;
    message.hidden = !text;
  }

  function stop() {
    if (current) current.controller.abort();
    current = null;
  }

  /** Handles an API failure; returns true when it was shown to the user. */
  function failed(err) {
    if (err.name === 'AbortError') return true;
    if (err.status === 401) {
      stop();
      ask('That access key was not accepted (it may have been revoked). Please enter it again or ask your administrator.');
    } else if (err.status === 403) {
      say('error', `This access key may not look items up: ${err.message}`);
    } else if (err.status === 429) {
      // This key is over its share of the server (shared by a whole contact center, perhaps).
      say('error', `Too many lookups with this access key right now. Try again in ${err.retryAfter || 1} s.`);
    } else if (err.status === 503) {
      say('error', 'Backlight is busy or its storage is unreachable right now. Try again in a few seconds.');
    } else {
      say('error', err.message);
    }
    return true;
  }

  async function search(text) {
    stop();
    say('', '');
    choices.hidden = true;
    card.hidden = true;
    historySection.hidden = true;
    const path = `/v1/items/${encodeURIComponent(text)}`;
    try {
      const doc = await Backlight.getJson(path);
      open(doc);
      return;
    } catch (err) {
      if (err.status !== 404 && err.status !== 422) { failed(err); return; }
    }
    // Not an item number: maybe a customer reference.
    try {
      const found = await Backlight.getJson(`/v1/items?customer_ref=${encodeURIComponent(text)}&limit=20`);
      if (found.items.length === 0) {
        say('info', `Nothing found for “${text}”. Check the number and try again.`);
        q.select();
      } else if (found.items.length === 1) {
        open(await Backlight.getJson(`/v1/items/${encodeURIComponent(found.items[0].item_id)}`));
      } else {
        showChoices(text, found.items);
      }
    } catch (err) {
      failed(err);
    }
  }

  function showChoices(ref, items) {
    const list = choices.querySelector('ul');
    list.replaceChildren(...items.map((it) => {
      const b = el('button', { type: 'button' }, `${it.item_id} — ${(STATUS[it.status] || {}).label || it.status}`);
      b.addEventListener('click', () => { q.value = it.item_id; search(it.item_id); });
      return el('li', {}, b);
    }));
    $('choices-title').textContent = `${items.length} items have the customer reference “${ref}”`;
    choices.hidden = false;
    list.querySelector('button').focus();
  }

  function open(doc) {
    const controller = new AbortController();
    current = { id: doc.item_id, controller, status: doc.status };
    window.history.replaceState(null, '', `/?item=${encodeURIComponent(doc.item_id)}`);
    render(doc);
    loadTimeline(doc.item_id, controller.signal);
    live(doc.item_id, controller.signal);
    q.select();
  }

  // ---- the status card ------------------------------------------------------------------

  function who(h) {
    if (!h) return null;
    const team = h.team ? `team ${h.team}` : 'someone not assigned to a team';
    return h.person ? `${h.person} (${team})` : team;
  }

  function slaBadge(doc) {
    const s = doc.sla.state;
    if (s === 'on_track') return el('span', { class: 'badge ok' }, el('span', { 'aria-hidden': 'true' }, '✓ '), doc.status === 'completed' ? 'Met' : 'On track');
    if (s === 'at_risk') return el('span', { class: 'badge warn' }, el('span', { 'aria-hidden': 'true' }, '! '), 'At risk');
    if (s === 'breached') return el('span', { class: 'badge bad' }, el('span', { 'aria-hidden': 'true' }, '✕ '), doc.status === 'completed' ? 'Finished late' : 'Overdue');
    return el('span', { class: 'badge none' }, 'No deadline');
  }

  function summary(doc) {
    const w = who(doc.handler);
    const step = doc.step ? `, at the step “${doc.step}”` : '';
    switch (doc.status) {
      case 'completed': return `It was completed ${when(doc.completed_ms)}.`;
      case 'in_progress': return `${cap(w || 'Someone')} is working on it now${step}.`;
      case 'paused': return `${cap(w || 'Someone')} has started it and paused it${step}.`;
      default: return doc.started_ms
        ? `It was handed on and is waiting for the next person to pick it up${step}.`
        : 'It is waiting for someone to start on it.';
    }
  }
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);

  function eta(doc) {
    if (doc.status === 'completed') return [`Already done (${when(doc.completed_ms)})`, null];
    const e = doc.eta;
    if (!e || e.expected_ms == null || e.method === 'none') {
      return ['No estimate yet', 'There are not enough recently finished items to compare with.'];
    }
    const how = e.method === 'queue_median'
      ? `Estimated from ${e.sample_size} recently finished items in the same queue${doc.registration ? ` (“${doc.registration.queue}”)` : ''}: the typical time they still needed from where this one is now.`
      : `Estimated from ${e.sample_size} recently finished items of all queues: the typical time they still needed from where this one is now.`;
    return [`Around ${when(e.expected_ms)} (${ago(e.expected_ms)})`, how];
  }

  function fact(term, ...value) {
    return [el('dt', {}, term), el('dd', {}, ...value)];
  }

  function render(doc) {
    const st = STATUS[doc.status] || { label: doc.status, cls: '' };
    $('card-title').textContent = doc.item_id;
    $('summary').textContent = summary(doc);
    const [etaText, etaHow] = eta(doc);
    const due = doc.sla.due_ms != null ? ` due ${when(doc.sla.due_ms)}` : '';
    const facts = [
      fact('Status', el('span', { class: `badge status ${st.cls}`, id: 'status-badge' }, st.label)),
      fact('Current step', doc.step || '—'),
      fact('Who has it', who(doc.handler) || 'Nobody at the moment'),
      fact('Started', doc.started_ms ? `${when(doc.started_ms)} (${ago(doc.started_ms)})` : 'Not started yet'),
      fact('Last worked on', doc.last_activity_ms ? `${when(doc.last_activity_ms)} (${ago(doc.last_activity_ms)})` : '—'),
      fact('Deadline', slaBadge(doc), due),
      fact('Expected completion', etaText, etaHow && el('div', { class: 'sub' }, etaHow)),
    ];
    // Only wfm and admin keys get the handle time; a contact-center key's document has none.
    if (doc.handle_time_ms != null) facts.push(fact('Time worked on it', `${duration(doc.handle_time_ms)}`));
    if (doc.registration) {
      if (doc.registration.customer_ref) facts.push(fact('Customer reference', doc.registration.customer_ref));
      if (doc.registration.queue) facts.push(fact('Queue', doc.registration.queue));
    }
    $('facts').replaceChildren(...facts.flat());
    card.hidden = false;
  }

  // ---- history ----------------------------------------------------------------------------

  async function loadTimeline(id, signal) {
    try {
      const t = await Backlight.getJson(`/v1/items/${encodeURIComponent(id)}/timeline`, { signal });
      if (signal.aborted) return;
      const items = t.entries.slice().reverse().map((e) => {
        const what = e.kind === 'action'
          ? (ACTION[e.what] || e.what)
          : `${PRESENCE[e.what] || e.what} for ${duration(e.end_ms - e.at_ms)}`;
        const details = [e.person || (e.team ? `team ${e.team}` : null), e.step ? `step “${e.step}”` : null].filter(Boolean).join(', ');
        return el('li', { class: e.kind },
          el('time', { datetime: new Date(e.at_ms).toISOString() }, when(e.at_ms)),
          what, details ? ` — ${details}` : '');
      });
      $('timeline').replaceChildren(...(items.length ? items : [el('li', {}, 'Nothing recorded yet.')]));
      historySection.hidden = false;
    } catch (err) {
      if (err.name !== 'AbortError') failed(err);
    }
  }

  // ---- live updates -------------------------------------------------------------------------

  function liveState(on, text) {
    $('live').classList.toggle('off', !on);
    $('live-text').textContent = text;
  }

  /** Keeps the card current until `signal` aborts: reads the SSE stream, reopens it when it ends. */
  async function live(id, signal) {
    let delay = 1000;
    let first = true;
    while (!signal.aborted) {
      try {
        const res = await Backlight.get(`/v1/items/${encodeURIComponent(id)}/events`, { signal, accept: 'text/event-stream' });
        liveState(true, 'Live: this card updates by itself');
        delay = 1000;
        for await (const ev of events(res.body, signal)) {
          if (ev.event === 'status') {
            const doc = JSON.parse(ev.data);
            if (!first) update(doc, signal);
            first = false;
          } else if (ev.event === 'end') {
            // The server closes streams after a while, and when it shuts down: reopen at once
            // (a revoked key is then refused with 403, which ends live updates).
            break;
          } else if (ev.event === 'error') {
            liveState(false, 'Live updates delayed: storage unreachable, still trying');
          }
        }
        if (signal.aborted) return;
        continue;
      } catch (err) {
        if (signal.aborted || err.name === 'AbortError') return;
        if (err.status === 401) { failed(err); return; }
        if (err.status === 404 || err.status === 403) {
          liveState(false, `No live updates: ${err.message}`);
          return;
        }
        if (err.status === 429) {
          // This key holds as many live views as the server allows (other tabs, other people
          // sharing the key): try again when the server says.
          const wait = (err.retryAfter || 30) * 1000;
          liveState(false, `Live updates paused: too many live views open with this key; retrying in ${Math.round(wait / 1000)} s`);
          await Backlight.sleep(wait, signal);
          continue;
        }
      }
      liveState(false, 'Connection lost, reconnecting…');
      await Backlight.sleep(delay, signal);
      delay = Math.min(delay * 2, 15000);
    }
  }

  function update(doc, signal) {
    const before = current && current.status;
    if (!current || current.id !== doc.item_id) return;
    current.status = doc.status;
    render(doc);
    loadTimeline(doc.item_id, signal);
    const st = (STATUS[doc.status] || { label: doc.status }).label;
    liveState(true, `Live: updated at ${clock(Date.now())}`);
    announce.textContent = before !== doc.status
      ? `Update: ${doc.item_id} is now “${st}”.`
      : `Update: ${doc.item_id} changed. ${summary(doc)}`;
  }

  /** Parses a text/event-stream body into {event, data} objects (comments skipped). */
  async function* events(body, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const onAbort = () => reader.cancel().catch(() => {});
    signal.addEventListener('abort', onAbort, { once: true });
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value.replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (!line || line.startsWith(':')) continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let v = i < 0 ? '' : line.slice(i + 1);
            if (v.startsWith(' ')) v = v.slice(1);
            if (field === 'event') event = v; else if (field === 'data') data.push(v);
          }
          if (data.length || event !== 'message') yield { event, data: data.join('\n') };
        }
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  // Last: everything above must exist before a stored key starts a lookup.
  const ask = Backlight.keyPanel({
    panel: $('key-panel'),
    form: $('key-form'),
    input: $('key-input'),
    error: $('key-error'),
    content: $('lookup'),
    signOut: $('sign-out'),
    onKey: () => {
      q.focus();
      const wanted = new URLSearchParams(location.search).get('item');
      if (wanted) { q.value = wanted; search(wanted); }
    },
  });
})();
