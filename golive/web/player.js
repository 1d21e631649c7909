// Watch a room over WHEP; wait for its publisher, and come back when it does.
//
// States (window.golive.state): idle, connecting, playing, waiting (no publisher yet or any
// more: retried with a bounded backoff), error (retrying would not help, e.g. a wrong token).

import {NetworkError, ROOM_PATTERN, Session, explain, getJSON} from './whip.js';
import {StatsMonitor, render as renderStats} from './stats.js';
import {bootstrap, debugHandle, query, setStatus} from './ui.js';

const RETRY_MS = [1000, 2000, 3000, 5000]; // then every 5 s
const ROOM_CHECK_MS = 2000;

const $ = (id) => document.getElementById(id);
const form = $('form');
const roomInput = $('room');
const tokenInput = $('token');
const playButton = $('play');
const stopButton = $('stop');
const video = $('video');
const muteButton = $('mute');
const fullscreenButton = $('fullscreen');
const status = $('status');
const audience = $('audience');
const statsList = $('stats');

const debug = debugHandle('player');
debug.state = 'idle';
let run = null; // what Play started: {room, base, token, session, monitor, timer, failures}

function setState(state) {
  debug.state = state;
  const active = state !== 'idle' && state !== 'error';
  playButton.disabled = false;
  stopButton.disabled = !active;
}

/** The room and the server it is on, from a room name, a player link or a WHEP URL. */
function target(text) {
  const value = text.trim();
  if (ROOM_PATTERN.test(value)) return {room: value, base: window.location.origin};
  let url;
  try {
    url = new URL(value);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  const whep = /\/api\/whep\/play\/([A-Za-z0-9_-]{1,64})\/?$/.exec(url.pathname);
  const room = whep ? whep[1] : url.searchParams.get('room') ?? '';
  return ROOM_PATTERN.test(room) ? {room, base: url.origin} : null;
}

function showAudience(room) {
  const viewers = room?.subscribers ?? 0;
  audience.textContent = room ? `${viewers} watching.` : '';
}

/** Whether the room has a publisher, or waits for one to reconnect (null: cannot tell), from
 * the server's room list. */
async function publisherPresent(current) {
  try {
    const rooms = await getJSON(`${current.base}/api/rooms`);
    const room = rooms.find((r) => r.name === current.room);
    if (run === current) showAudience(room);
    return Boolean(room?.hasPublisher || room?.waiting);
  } catch {
    return null;
  }
}

function retryLater(current, message, tone, delay) {
  clearTimeout(current.timer);
  const wait = delay ?? RETRY_MS[Math.min(current.failures, RETRY_MS.length - 1)];
  current.failures += 1;
  setStatus(status, message, tone);
  current.timer = setTimeout(() => attempt(current), wait);
}

function waitForPublisher(current) {
  setState('waiting');
  video.srcObject = null;
  retryLater(current, `Waiting for the publisher of room ${current.room}…`, 'warn');
}

async function attempt(current) {
  if (run !== current) return;
  // Asking the room list first costs the server nothing; an offer into an empty room would
  // cost it a peer connection each time.
  const present = await publisherPresent(current);
  if (run !== current) return;
  if (present === false) {
    waitForPublisher(current);
    return;
  }
  setState('connecting');
  setStatus(status, `Connecting to room ${current.room}…`);
  const {iceServers} = await bootstrap();
  const pc = new RTCPeerConnection({iceServers});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const stream = new MediaStream();
  pc.addEventListener('track', (event) => stream.addTrack(event.track));
  const session = new Session(pc, `${current.base}/api/whep/play/${current.room}`, {
    token: current.token,
    onEnd: (how) => lost(current, session, {serverEnded: how === 'closed'}),
  });
  current.session = session;
  debug.pc = pc;
  pc.addEventListener('connectionstatechange', () => onConnectionState(current, session));
  try {
    await session.start();
  } catch (error) {
    await session.stop();
    if (run !== current || current.session !== session) return;
    current.session = null;
    failed(current, error);
    return;
  }
  if (run !== current) return;
  video.srcObject = stream;
  current.monitor = new StatsMonitor(pc, 'inbound', (summary) => {
    debug.stats = summary;
    renderStats(statsList, summary);
  });
  current.monitor.start();
}

function failed(current, error) {
  const retryable = error instanceof NetworkError ||
    [403, 429, 503].includes(error.status) || (error.status ?? 0) >= 500;
  if (error.status === 404) {
    waitForPublisher(current);
  } else if (retryable) {
    setState('waiting');
    retryLater(current, `${explain(error, {role: 'viewer', room: current.room})} ` +
      'Trying again by itself…', 'warn', error.retryAfter ? error.retryAfter * 1000 : null);
  } else {
    setState('error');
    setStatus(status, explain(error, {role: 'viewer', room: current.room}), 'error');
    run = null;
  }
}

function onConnectionState(current, session) {
  if (run !== current || current.session !== session) return;
  const state = session.pc.connectionState;
  if (state === 'connected') {
    current.failures = 0;
    setState('playing');
    setStatus(status, `Playing room ${current.room}.`, 'ok');
    checkRoom(current, session);
  } else if (state === 'disconnected') {
    setStatus(status, 'The connection is interrupted; waiting for it to come back…', 'warn');
  }
}

/** While playing, look at the room list now and then: a room without publisher is over. */
function checkRoom(current, session) {
  clearTimeout(current.timer);
  current.timer = setTimeout(async () => {
    if (run !== current || current.session !== session) return;
    const present = await publisherPresent(current);
    if (run !== current || current.session !== session) return;
    if (present === false) {
      lost(current, session, {serverEnded: true});
    } else {
      checkRoom(current, session);
    }
  }, ROOM_CHECK_MS);
}

/**
 * The session is over without a Stop: the server ended it (its publisher left: a DELETE
 * would find nothing), or the connection failed (the DELETE frees the server's side).
 */
async function lost(current, session, {serverEnded}) {
  if (current.session !== session) return;
  current.session = null;
  clearTimeout(current.timer);
  current.monitor?.stop();
  current.monitor = null;
  debug.stats = null;
  renderStats(statsList, null);
  if (serverEnded) session.forget();
  else await session.stop();
  if (run === current) waitForPublisher(current);
}

async function stopRun() {
  const current = run;
  run = null;
  if (!current) return;
  clearTimeout(current.timer);
  current.monitor?.stop();
  debug.stats = null;
  renderStats(statsList, null);
  video.srcObject = null;
  showAudience(null);
  const session = current.session;
  current.session = null;
  await session?.stop();
}

async function play() {
  const found = target(roomInput.value);
  if (!found) {
    roomInput.setAttribute('aria-invalid', 'true');
    setStatus(status, 'Enter a room name (1 to 64 letters, digits, "-" or "_") or a player ' +
      'link.', 'error');
    roomInput.focus();
    return;
  }
  roomInput.removeAttribute('aria-invalid');
  await stopRun();
  run = {...found, token: tokenInput.value.trim(), session: null, monitor: null, timer: null,
    failures: 0};
  debug.room = found.room;
  setState('connecting');
  attempt(run);
}

async function stop() {
  const room = run?.room;
  await stopRun();
  setState('idle');
  setStatus(status, room ? `Stopped watching room ${room}.` : 'Stopped.');
}

function updateMute() {
  muteButton.textContent = video.muted ? 'Unmute' : 'Mute';
}

async function main() {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    play();
  });
  stopButton.addEventListener('click', stop);
  muteButton.addEventListener('click', () => {
    video.muted = !video.muted;
    updateMute();
  });
  video.addEventListener('volumechange', updateMute);
  if (document.fullscreenEnabled) {
    fullscreenButton.addEventListener('click', () => {
      const change = document.fullscreenElement
        ? document.exitFullscreen()
        : video.requestFullscreen();
      change.catch((error) => setStatus(status, `Fullscreen is not available: ${error.message}`,
        'warn'));
    });
  } else {
    fullscreenButton.hidden = true;
  }
  window.addEventListener('pagehide', () => {
    const current = run;
    run = null;
    if (current) {
      clearTimeout(current.timer);
      current.monitor?.stop();
      current.session?.stop({keepalive: true});
    }
  });
  window.addEventListener('pageshow', (event) => {
    if (event.persisted && roomInput.value) play(); // back from the back/forward cache
  });
  const settings = await bootstrap();
  if (settings.authEnabled) $('token-need').textContent = '(this server may need one)';
  updateMute();
  setState('idle');
  roomInput.value = query('room');
  if (roomInput.value) play();
}

main();
