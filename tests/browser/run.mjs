// Browser tests of the Backlight pages, in headless Debian Chromium driven by playwright-core.
//
// Run through scripts/browser-test.sh, which builds and starts a real backlight-server (with
// its embedded ClickHouse, on a free loopback port), creates a tenant and API keys, and passes:
//   BASE_URL, KEY_CC, KEY_WFM, KEY_ADMIN, ENROLL_KEY, TENANT, SERVER_BIN, DATA_DIR
// This script enrolls a device, registers items, ingests events (gzip, as agents do), then
// drives the pages. Tests run in order (later ones build on the data of earlier ones); each
// has a time limit. Screenshots go to tests/artifacts/. Exit code 1 when any test fails.

import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/browser-test.sh)`);
  return v;
};
const BASE = env('BASE_URL');
const KEY_CC = env('KEY_CC');
const KEY_WFM = env('KEY_WFM');
const KEY_ADMIN = env('KEY_ADMIN');
const TENANT = env('TENANT');
const HERE = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = join(HERE, '..', 'artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TEST_TIMEOUT_MS = 60_000;
mkdirSync(ARTIFACTS, { recursive: true });

// ---- the server side: enroll, register, ingest ------------------------------------------------

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function api(method, path, { key, body, headers = {} } = {}) {
  const res = await fetch(BASE + path, {
    method,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body == null ? undefined : (Buffer.isBuffer(body) ? body : JSON.stringify(body)),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const device = { id: null, credential: null, seq: 0 };

async function enroll() {
  const r = await api('POST', '/v1/enroll', {
    body: { enrollment_key: env('ENROLL_KEY'), hostname: 'desk-browser-test', agent_version: '0.1.0', os: 'linux' },
  });
  device.id = r.device_id;
  device.credential = r.device_credential;
  execFileSync(env('SERVER_BIN'), ['admin', '--data-dir', env('DATA_DIR'), 'device', 'assign', '--tenant', TENANT, device.id, '--team', 'claims-north'], { stdio: 'pipe' });
}

/** Uploads events as one gzip-compressed batch, numbering them like an agent's spool does. */
async function ingest(events) {
  const batch = {
    protocol: 1,
    device_id: device.id,
    events: events.map((e) => ({ seq: ++device.seq, id: randomUUID(), ...e })),
  };
  const r = await api('POST', '/v1/ingest', {
    key: device.credential,
    body: gzipSync(Buffer.from(JSON.stringify(batch))),
    headers: { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' },
  });
  assert(r.accepted === events.length, `ingest accepted ${JSON.stringify(r)}`);
}

const MIN = 60_000;
const NOW = Date.now();
const span = (item, start, minutes, step, state = 'active') => ({
  kind: 'activity_span', app: 'claims-desk', start_ms: start, end_ms: start + minutes * MIN, state,
  ...(item ? { item_id: item, step } : {}),
});
const action = (item, what, at, step) => ({ kind: 'work_item', item_id: item, action: what, at_ms: at, source: 'rule', ...(step ? { step } : {}) });

async function seed() {
  await enroll();
  const items = [
    { item_id: 'CLM-1042', queue: 'motor', priority: 3, sla_due_ms: NOW + 4 * 60 * MIN, customer_ref: 'C-9' },
    ...[1, 2, 3].map((i) => ({ item_id: `CLM-200${i}`, queue: 'motor', sla_due_ms: NOW + 60 * MIN, customer_ref: `C-10${i}` })),
  ];
  await api('POST', '/v1/items', { key: KEY_ADMIN, body: { items } });
  const events = [];
  // Three finished items (14, 16, 18 minutes of work): the ETA's sample, the report's rows.
  [1, 2, 3].forEach((i) => {
    const start = NOW - 200 * MIN + i * 40 * MIN;
    const minutes = 12 + 2 * i;
    events.push(action(`CLM-200${i}`, 'started', start, 'intake'), span(`CLM-200${i}`, start, minutes, 'assess'), action(`CLM-200${i}`, 'completed', start + minutes * MIN, 'assess'));
  });
  events.push(span(null, NOW - 45 * MIN, 5), span(null, NOW - 40 * MIN, 3, null, 'idle'));
  // The item the contact center asks about: started 25 minutes ago, 10 minutes of work so far.
  events.push(action('CLM-1042', 'started', NOW - 25 * MIN, 'intake'), span('CLM-1042', NOW - 25 * MIN, 10, 'assess'));
  events.sort((a, b) => (a.start_ms ?? a.at_ms) - (b.start_ms ?? b.at_ms));
  await ingest(events);
}

// ---- the browser ------------------------------------------------------------------------------

const problems = []; // console errors (CSP violations among them) and uncaught page errors

async function newPage(context, label) {
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    // The browser logs every 4xx answer as "Failed to load resource"; some tests want those.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`${label}: console: ${m.text()}`);
  });
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function enterKey(page, key) {
  await page.locator('#key-input').fill(key);
  await page.locator('#key-input').press('Enter');
}

const text = (page, sel) => page.locator(sel).innerText();

// ---- tests --------------------------------------------------------------------------------------

let context;
let lookupPage;

const tests = [
  ['pages send a strict CSP and no-cache; assets are immutable', async () => {
    for (const path of ['/', '/dashboard']) {
      const res = await fetch(BASE + path);
      assert(res.status === 200, `${path}: ${res.status}`);
      assert(res.headers.get('cache-control') === 'no-cache', `${path}: cache-control ${res.headers.get('cache-control')}`);
      assert((res.headers.get('content-security-policy') || '').includes("script-src 'self'"), `${path}: CSP ${res.headers.get('content-security-policy')}`);
      const html = await res.text();
      const assets = [...html.matchAll(/"(\/static\/[^"]+)"/g)].map((m) => m[1]);
      assert(assets.length >= 3, `${path}: assets ${assets}`);
      for (const a of assets) {
        const r = await fetch(BASE + a);
        assert(r.status === 200 && (r.headers.get('cache-control') || '').includes('immutable'), `${a}: ${r.status} ${r.headers.get('cache-control')}`);
      }
    }
  }],

  ['lookup page asks for the key, then finds the item and shows its status', async () => {
    lookupPage = await newPage(context, 'lookup');
    await lookupPage.goto(`${BASE}/`);
    await lookupPage.locator('#key-input').waitFor();
    await shot(lookupPage, 'browser-1-key-prompt');
    await enterKey(lookupPage, KEY_CC);
    assert(await lookupPage.evaluate(() => document.activeElement.id) === 'q', 'the search box has the focus');
    await lookupPage.locator('#q').fill('CLM-1042');
    await lookupPage.locator('#q').press('Enter');
    await lookupPage.locator('#card-title', { hasText: 'CLM-1042' }).waitFor();
    assert(await text(lookupPage, '#status-badge') === 'Being worked on', `status: ${await text(lookupPage, '#status-badge')}`);
    const facts = await text(lookupPage, '#facts');
    for (const want of ['team claims-north', 'assess', 'On track', 'Around', 'same queue', 'C-9']) {
      assert(facts.includes(want), `the card should say “${want}”:\n${facts}`);
    }
    await lookupPage.locator('#timeline li', { hasText: 'Work started' }).waitFor();
    await lookupPage.locator('#live-text', { hasText: 'Live' }).waitFor({ timeout: 10_000 });
    await shot(lookupPage, 'browser-2-lookup-in-progress');
  }],

  ['a completed event updates the open card live, without a reload', async () => {
    await lookupPage.evaluate(() => { window.__notReloaded = true; });
    const t0 = Date.now();
    await ingest([action('CLM-1042', 'completed', Date.now(), 'assess')]);
    await lookupPage.locator('#status-badge', { hasText: 'Done' }).waitFor({ timeout: 5_000 });
    const took = Date.now() - t0;
    assert(await lookupPage.evaluate(() => window.__notReloaded === true), 'the page was reloaded');
    assert((await text(lookupPage, '#announce')).includes('Done'), 'the update is announced (aria-live)');
    await lookupPage.locator('#timeline li', { hasText: 'Completed' }).waitFor();
    await shot(lookupPage, 'browser-3-lookup-completed-live');
    console.log(`    (update shown ${took} ms after the upload)`);
  }],

  ['an unknown number says so in plain words', async () => {
    await lookupPage.locator('#q').fill('NOPE-1');
    await lookupPage.locator('#q').press('Enter');
    await lookupPage.locator('#message', { hasText: 'Nothing found for “NOPE-1”' }).waitFor();
    assert(await lookupPage.locator('#card').isHidden(), 'no card for an unknown item');
    await lookupPage.close();
  }],

  ['dashboard shows the report rows and charts for a wfm key', async () => {
    const page = await newPage(context, 'dashboard');
    await page.goto(`${BASE}/dashboard`);
    await enterKey(page, KEY_WFM);
    await page.locator('#status', { hasText: 'Report loaded' }).waitFor({ timeout: 30_000 });
    const row = page.locator('#table tbody tr', { hasText: 'claims-north' });
    await row.waitFor();
    const cells = await row.locator('td').allInnerTexts();
    // CLM-2001..3 (14, 16, 18 min of work) and CLM-1042 (10 min, completed by the live test).
    assert(cells[0] === '4', `items done: ${cells}`);
    assert(cells[1] === '14 min 30 s', `average handle time: ${cells}`);
    assert(await page.locator('#aht-chart svg rect').count() >= 1, 'handle time chart has bars');
    assert(await page.locator('#occ-chart svg rect').count() >= 1, 'occupancy chart has bars');
    await shot(page, 'browser-4-dashboard');
    context.__dashboard = page;
  }],

  ['the CSV button downloads the report as CSV', async () => {
    const page = context.__dashboard;
    const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#csv').click()]);
    const file = await download.path();
    const csv = readFileSync(file, 'utf8');
    assert(download.suggestedFilename().endsWith('.csv'), `file name ${download.suggestedFilename()}`);
    assert(csv.startsWith('group,start,end,items_handled'), `CSV header: ${csv.slice(0, 80)}`);
    assert(csv.includes('claims-north'), `CSV rows: ${csv}`);
    await page.close();
  }],

  ['keyboard only: key, search by customer reference, dashboard by day', async () => {
    const page = await newPage(context, 'keyboard');
    await page.goto(`${BASE}/`);
    await page.locator('#key-input').waitFor();
    const focused = () => page.evaluate(() => document.activeElement && (document.activeElement.id || document.activeElement.textContent.trim()));
    assert(await focused() === 'key-input', `focus starts in the key box, not ${await focused()}`);
    await page.keyboard.type(KEY_WFM);
    await page.keyboard.press('Enter');
    assert(await focused() === 'q', 'then in the search box');
    await page.keyboard.type('C-9');
    await page.keyboard.press('Enter');
    await page.locator('#card-title', { hasText: 'CLM-1042' }).waitFor();
    // Back through the header to the dashboard link: Shift+Tab from the search box.
    await page.keyboard.press('Shift+Tab'); // sign out
    await page.keyboard.press('Shift+Tab'); // Team dashboard
    assert(await focused() === 'Team dashboard', `focus on the dashboard link, not ${await focused()}`);
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/dashboard/);
    await page.locator('#status', { hasText: 'Report loaded' }).waitFor({ timeout: 30_000 });
    assert(await focused() === 'from', `dashboard focus starts on the first filter, not ${await focused()}`);
    // Tab also steps through the day / month / year parts of each date box.
    const tabTo = async (id) => {
      for (let i = 0; i < 12 && await focused() !== id; i++) await page.keyboard.press('Tab');
      assert(await focused() === id, `Tab should reach #${id}, focus is on ${await focused()}`);
    };
    await tabTo('group_by');
    for (const _ of [1, 2, 3, 4]) await page.keyboard.press('ArrowDown'); // Team → Day
    assert(await page.locator('#group_by').inputValue() === 'day', 'group by day chosen by keyboard');
    await tabTo('show'); // past team and queue
    await page.keyboard.press('Enter');
    await page.locator('#table-caption', { hasText: 'By day' }).waitFor({ timeout: 30_000 });
    const rows = await page.locator('#table tbody tr').count();
    assert(rows === 7, `a week has 7 day rows, got ${rows}`);
    await shot(page, 'browser-5-dashboard-by-day-keyboard');
    await page.close();
  }],

  ['a cc_agent key on the dashboard gets a clear "needs the role wfm" message', async () => {
    const page = await newPage(context, 'wrong-role');
    await page.goto(`${BASE}/dashboard`);
    await enterKey(page, KEY_CC);
    const msg = page.locator('#message');
    await msg.waitFor({ state: 'visible', timeout: 15_000 });
    const said = await msg.innerText();
    assert(said.includes('needs the role wfm'), `message: ${said}`);
    assert(await page.locator('#results').isHidden(), 'no report shown');
    await shot(page, 'browser-6-dashboard-wrong-role');
    await page.close();
  }],

  ['no CSP violations, console errors or page errors on any page', async () => {
    assert(problems.length === 0, problems.join('\n'));
  }],
];

// ---- runner -------------------------------------------------------------------------------------

const started = Date.now();
const profile = mkdtempSync(join(tmpdir(), 'backlight-chromium-'));
let failures = 0;
try {
  await seed();
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timezoneId: 'Europe/Berlin',
    locale: 'en-GB',
    viewport: { width: 1200, height: 900 },
    acceptDownloads: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(15_000);
  for (const [name, fn] of tests) {
    const t0 = Date.now();
    try {
      await Promise.race([fn(), new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${TEST_TIMEOUT_MS} ms`)), TEST_TIMEOUT_MS).unref())]);
      console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (e) {
      failures++;
      console.log(`FAIL ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)\n     ${String(e.stack || e).split('\n').join('\n     ')}`);
      for (const p of context.pages()) await shot(p, `browser-failure-${failures}`).catch(() => {});
    }
  }
} catch (e) {
  failures++;
  console.log(`FAIL setup: ${e.stack || e}`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(`${tests.length - failures}/${tests.length} passed in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in tests/artifacts/`);
process.exit(failures ? 1 : 0);
