// The recordings on the server: GET /api/records (admin), with play and download links.
//
// Without a token the links are plain links to /records/{name}. With one (a server with
// ADMIN_TOKEN), a link cannot carry it: the file is fetched with the token instead and
// handed to the browser as a blob URL.

import {HttpError, authHeaders, explain, getJSON, httpError, request} from './whip.js';
import {bootstrap, debugHandle, formatBytes, formatTime, h, setStatus} from './ui.js';

const TYPES = {ivf: 'video/x-ivf', ogg: 'audio/ogg; codecs=opus', mkv: 'video/x-matroska'};

const $ = (id) => document.getElementById(id);
const form = $('form');
const tokenInput = $('token');
const status = $('status');
const table = $('records');
const body = table.querySelector('tbody');
const playback = $('playback');
const playbackTitle = $('playback-title');

const debug = debugHandle('records');
let playing = null; // the blob: URL being played, freed when another is

function typeOf(name) {
  return TYPES[name.split('.').pop()] ?? 'application/octet-stream';
}

function playable(name) {
  const type = typeOf(name);
  const probe = document.createElement(type.startsWith('audio/') ? 'audio' : 'video');
  return probe.canPlayType(type) !== '';
}

/** The recording's URL as the browser may use it: with a token, a blob fetched with it. */
async function usableUrl(record) {
  const token = tokenInput.value.trim();
  if (!token) return record.url;
  const response = await request(record.url, {headers: authHeaders(token)});
  if (!response.ok) throw await httpError(response);
  return URL.createObjectURL(await response.blob());
}

function free(url) {
  if (url?.startsWith('blob:')) URL.revokeObjectURL(url);
}

async function play(record) {
  setStatus(status, `Loading ${record.name}…`);
  let url;
  try {
    url = await usableUrl(record);
  } catch (error) {
    setStatus(status, failure(error), 'error');
    return;
  }
  free(playing);
  playing = url;
  const audio = typeOf(record.name).startsWith('audio/');
  const media = h(audio ? 'audio' : 'video', {controls: true, autoplay: true, src: url});
  media.addEventListener('error', () => {
    setStatus(status, `This browser cannot play ${record.name}; download it and use ffplay, ` +
      'mpv or VLC.', 'error');
  });
  playbackTitle.textContent = `Playing ${record.name}`;
  playback.replaceChildren(playbackTitle, media);
  playback.hidden = false;
  setStatus(status, `Playing ${record.name}.`, 'ok');
  media.focus();
}

async function download(record, event) {
  if (!tokenInput.value.trim()) return; // the plain link does it
  event.preventDefault();
  setStatus(status, `Downloading ${record.name}…`);
  try {
    const url = await usableUrl(record);
    const link = h('a', {href: url, download: record.name, hidden: true});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => free(url), 60_000); // the download has its bytes by then
    setStatus(status, `Downloaded ${record.name}.`, 'ok');
  } catch (error) {
    setStatus(status, failure(error), 'error');
  }
}

function row(record) {
  const when = new Date(record.modTime);
  const actions = h('div', {class: 'buttons'});
  if (playable(record.name)) {
    const button = h('button', {type: 'button', class: 'secondary',
      'aria-label': `Play ${record.name}`}, 'Play');
    button.addEventListener('click', () => play(record));
    actions.append(button);
  }
  const link = h('a', {class: 'button secondary', href: record.url, download: record.name,
    'aria-label': `Download ${record.name}`}, 'Download');
  link.addEventListener('click', (event) => download(record, event));
  actions.append(link);
  return h('tr', {'data-name': record.name},
    h('td', {}, record.name),
    h('td', {class: 'number', title: `${record.size} bytes`, 'data-field': 'size'},
      formatBytes(record.size)),
    h('td', {}, h('time', {datetime: record.modTime},
      Number.isNaN(when.getTime()) ? record.modTime : formatTime(when))),
    h('td', {}, actions));
}

function failure(error) {
  if (error instanceof HttpError && error.status === 401) {
    return 'The admin token is missing or wrong. Enter the server\'s ADMIN_TOKEN.';
  }
  if (error instanceof HttpError && error.status === 404 &&
      error.serverMessage === 'recording is disabled') {
    return 'Recording is off on this server: start golive with RECORD_ENABLED=1.';
  }
  if (error instanceof HttpError && error.status === 404) {
    return 'That recording is not on the server any more.';
  }
  return explain(error, {role: 'admin', room: ''});
}

async function load() {
  setStatus(status, 'Loading the recordings…');
  let records;
  try {
    records = await getJSON('/api/records', {token: tokenInput.value.trim()});
  } catch (error) {
    table.hidden = true;
    setStatus(status, failure(error), 'error');
    return;
  }
  debug.records = records;
  body.replaceChildren(...records.map(row));
  table.hidden = records.length === 0;
  setStatus(status, records.length === 0
    ? 'No recordings yet. They appear here when a publisher stops.'
    : `${records.length} recording${records.length === 1 ? '' : 's'}, newest first.`,
  records.length === 0 ? 'info' : 'ok');
}

async function main() {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load();
  });
  const settings = await bootstrap();
  if (!settings.recordEnabled) {
    setStatus(status, 'Recording is off on this server: start golive with RECORD_ENABLED=1 ' +
      'to record every room.', 'info');
    return;
  }
  if (settings.authEnabled) {
    setStatus(status, 'Enter the admin token (ADMIN_TOKEN) and press Show recordings.');
    tokenInput.focus();
    return;
  }
  load(); // an open server (or one with only ADMIN_TOKEN, which then asks for it)
}

main();
