// Shared by both pages: the API key prompt, calls to the JSON API, formatting.
// The key lives in sessionStorage: it survives moving between the pages of this tab and is
// gone when the tab closes. It is only ever sent as `Authorization: Bearer` to this server.
'use strict';

const Backlight = (() => {
  const KEY = 'backlight.apiKey';

  function getKey() {
    try { return sessionStorage.getItem(KEY) || ''; } catch (_) { return ''; }
  }
  function setKey(k) {
    try { sessionStorage.setItem(KEY, k); } catch (_) { /* private mode: key lasts this page only */ }
  }
  function forgetKey() {
    try { sessionStorage.removeItem(KEY); } catch (_) { /* nothing kept */ }
  }

  /** An answer of the API that is not 2xx, with the server's JSON error body. */
  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      super((body && body.message) || `the server answered ${status}`);
      this.status = status;
      this.code = body && body.error;
      this.field = body && body.field;
      this.retryAfter = retryAfter;
    }
  }

  async function errorOf(res) {
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    const ra = parseInt(res.headers.get('Retry-After') || '', 10);
    return new ApiError(res.status, body, Number.isFinite(ra) ? ra : null);
  }

  /** GET a path of this server with the key; resolves to the Response (2xx only). */
  async function get(path, options = {}) {
    let res;
    try {
      res = await fetch(path, {
        headers: { Authorization: `Bearer ${getKey()}`, Accept: options.accept || 'application/json' },
        cache: 'no-store',
        signal: options.signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, { message: 'The server could not be reached. Check your connection and try again.' });
    }
    if (!res.ok) throw await errorOf(res);
    return res;
  }

  async function getJson(path, options) {
    return (await get(path, options)).json();
  }

  /**
   * Wires the key panel: shows it when no key is stored, stores the key on submit and calls
   * `onKey`. Returns `ask(message)` to show the panel again (e.g. after a 401).
   */
  function keyPanel({ panel, form, input, error, content, signOut, onKey }) {
    function ask(message) {
      content.hidden = true;
      panel.hidden = false;
      signOut.hidden = true;
      error.hidden = !message;
      error.textContent = message || '';
      input.value = '';
      input.focus();
    }
    function ready() {
      panel.hidden = true;
      content.hidden = false;
      signOut.hidden = false;
      onKey();
    }
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const k = input.value.trim();
      if (!k.startsWith('blk_')) {
        error.hidden = false;
        error.textContent = 'That is not an access key. Access keys start with “blk_”.';
        input.focus();
        return;
      }
      setKey(k);
      ready();
    });
    signOut.addEventListener('click', () => { forgetKey(); ask(''); });
    if (getKey()) ready(); else ask('');
    return ask;
  }

  // ---- formatting -------------------------------------------------------------------------

  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

  function when(ms) {
    return ms == null ? '—' : dateTime.format(new Date(ms));
  }
  function clock(ms) {
    return timeOnly.format(new Date(ms));
  }
  /** "5 minutes ago", "in 2 hours". */
  function ago(ms, now = Date.now()) {
    if (ms == null) return '';
    const s = Math.round((ms - now) / 1000);
    const a = Math.abs(s);
    if (a < 45) return relative.format(0, 'second');
    if (a < 2700) return relative.format(Math.round(s / 60), 'minute');
    if (a < 129600) return relative.format(Math.round(s / 3600), 'hour');
    return relative.format(Math.round(s / 86400), 'day');
  }
  /** 754000 → "12 min 34 s"; 5400000 → "1 h 30 min". */
  function duration(ms) {
    if (ms == null || !Number.isFinite(ms)) return '—';
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    return `${h} h ${String(m % 60).padStart(2, '0')} min`;
  }
  function percent(x) {
    return x == null || !Number.isFinite(x) ? '—' : `${Math.round(x * 1000) / 10} %`;
  }

  /** `el('p', {class: 'x'}, 'text', child)`: builds DOM without innerHTML (no injection). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') node.className = v; else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  return { getKey, forgetKey, get, getJson, ApiError, keyPanel, when, clock, ago, duration, percent, el, sleep };
})();
