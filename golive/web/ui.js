// What every golive page shares: the server's bootstrap, status messages, the debug handle.

import {getJSON} from './whip.js';

let settings = null;

/**
 * GET /api/bootstrap once: {authEnabled, recordEnabled, iceServers, features}. A server
 * without it (or unreachable) gets defaults, so a page still works with plain WHIP/WHEP.
 */
export function bootstrap() {
  settings ??= getJSON('/api/bootstrap').catch(() => ({
    authEnabled: false, recordEnabled: false, iceServers: [], features: {},
  }));
  return settings;
}

/** Show `text` in a status element; `tone` is info, ok, warn or error (styling only). */
export function setStatus(element, text, tone = 'info') {
  element.dataset.tone = tone;
  if (element.textContent !== text) element.textContent = text;
}

/**
 * `window.golive`: a read-only look at the page's state for people debugging (and for the
 * browser tests): `page`, and what the page adds (`state`, `pc`, `stats`...).
 */
export function debugHandle(page) {
  const handle = {page};
  window.golive = handle;
  return handle;
}

export function query(name) {
  return new URLSearchParams(window.location.search).get(name) ?? '';
}

export function formatBytes(size) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatTime(date) {
  return date.toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'medium'});
}

/** A player link for `room` on this server. */
export function playerLink(room) {
  return `player.html?room=${encodeURIComponent(room)}`;
}

/** `element` with `attributes` and children (strings become text, never HTML). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? '' : String(value));
  }
  element.append(...children);
  return element;
}
