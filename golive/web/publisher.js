// Publish the camera and microphone to a room over WHIP.
//
// States (window.golive.state): preview (camera on, not publishing), connecting, live,
// stopping; `unavailable` when this browser cannot capture at all.

import {ROOM_PATTERN, Session, explain, getJSON} from './whip.js';
import {StatsMonitor, render as renderStats} from './stats.js';
import {bootstrap, debugHandle, playerLink, query, setStatus} from './ui.js';

const CODECS = {vp8: 'video/vp8', h264: 'video/h264', vp9: 'video/vp9', av1: 'video/av1'};
const ROOM_CHECK_MS = 2000;

const $ = (id) => document.getElementById(id);
const form = $('form');
const roomInput = $('room');
const tokenInput = $('token');
const cameraSelect = $('camera');
const micSelect = $('microphone');
const qualitySelect = $('quality');
const codecSelect = $('codec');
const startButton = $('start');
const stopButton = $('stop');
const preview = $('preview');
const status = $('status');
const statsList = $('stats');
const watch = $('watch');
const watchLink = $('watch-link');

const debug = debugHandle('publisher');
let stream = null; // what the preview shows, and what is published
let session = null;
let monitor = null;
let roomCheck = null;
let opening = Promise.resolve();

function setState(state) {
  debug.state = state;
  const busy = state !== 'preview';
  for (const control of [roomInput, tokenInput, cameraSelect, micSelect, qualitySelect,
    codecSelect]) {
    control.disabled = busy;
  }
  startButton.disabled = busy;
  stopButton.disabled = !(state === 'connecting' || state === 'live');
}

function deviceError(error) {
  switch (error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera and microphone access was refused. Allow it in the site settings of ' +
        'your browser, then reload the page.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found. Plug one in, or choose another.';
    case 'NotReadableError':
      return 'The camera or microphone is in use by another application.';
    default:
      return `The camera or microphone could not start: ${error.message || error.name}`;
  }
}

function constraints() {
  const height = Number(qualitySelect.value);
  const video = cameraSelect.value === 'none' ? false : {
    deviceId: cameraSelect.value ? {exact: cameraSelect.value} : undefined,
    width: {ideal: Math.round((height * 16) / 9)},
    height: {ideal: height},
    frameRate: {ideal: 30},
  };
  const audio = micSelect.value === 'none' ? false : {
    deviceId: micSelect.value ? {exact: micSelect.value} : undefined,
  };
  return {video, audio};
}

function fillDevices(select, devices, kind, current) {
  const keep = select.value;
  const none = kind === 'videoinput' ? 'No camera' : 'No microphone';
  const options = devices
    .filter((device) => device.kind === kind && device.deviceId)
    .map((device, index) => new Option(
      device.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${index + 1}`,
      device.deviceId));
  if (options.length === 0) {
    options.push(new Option(kind === 'videoinput' ? 'Default camera' : 'Default microphone', ''));
  }
  select.replaceChildren(...options, new Option(none, 'none'));
  select.value = keep === 'none' ? 'none' : current ?? keep;
  if (select.selectedIndex < 0) select.selectedIndex = 0;
}

function stopPreview() {
  for (const track of stream?.getTracks() ?? []) track.stop();
  stream = null;
  preview.srcObject = null;
}

/** (Re)open the chosen camera and microphone for the preview. */
async function openDevices() {
  stopPreview();
  const wanted = constraints();
  if (!wanted.video && !wanted.audio) {
    setStatus(status, 'Choose a camera or a microphone to publish.', 'warn');
    return;
  }
  setStatus(status, 'Starting the camera…');
  try {
    stream = await navigator.mediaDevices.getUserMedia(wanted);
  } catch (error) {
    setStatus(status, deviceError(error), 'error');
    return;
  }
  preview.srcObject = stream;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const [video] = stream.getVideoTracks();
  const [audio] = stream.getAudioTracks();
  fillDevices(cameraSelect, devices, 'videoinput', video?.getSettings().deviceId);
  fillDevices(micSelect, devices, 'audioinput', audio?.getSettings().deviceId);
  setStatus(status, 'Ready. Choose a room and press Start publishing.');
}

function reopen() {
  opening = opening.then(openDevices);
  return opening;
}

/** Put the chosen codec first (with its retransmission format); the server answers with it. */
function preferCodec(transceiver, codec) {
  const all = RTCRtpSender.getCapabilities('video')?.codecs ?? [];
  const wanted = all.filter((c) => c.mimeType.toLowerCase() === CODECS[codec]);
  const rtx = all.filter((c) => c.mimeType.toLowerCase() === 'video/rtx');
  try {
    transceiver.setCodecPreferences([...wanted, ...rtx]);
  } catch {
    transceiver.setCodecPreferences(wanted);
  }
}

function markCodecs() {
  const all = RTCRtpSender.getCapabilities('video')?.codecs ?? [];
  for (const option of codecSelect.options) {
    const supported = all.some((c) => c.mimeType.toLowerCase() === CODECS[option.value]);
    option.disabled = !supported;
    if (!supported) option.textContent += ' (not in this browser)';
  }
  const asked = [...codecSelect.options].find((o) => o.value === query('codec').toLowerCase());
  if (asked && !asked.disabled) codecSelect.value = asked.value;
}

async function start() {
  const room = roomInput.value.trim();
  if (!ROOM_PATTERN.test(room)) {
    roomInput.setAttribute('aria-invalid', 'true');
    setStatus(status, 'Room names are 1 to 64 letters, digits, "-" or "_".', 'error');
    roomInput.focus();
    return;
  }
  roomInput.removeAttribute('aria-invalid');
  setState('connecting');
  await opening; // the camera being (re)opened
  if (!stream || stream.getTracks().length === 0) {
    setState('preview');
    setStatus(status, 'There is no camera or microphone to publish.', 'error');
    return;
  }
  setStatus(status, `Connecting to room ${room}…`);
  const {iceServers} = await bootstrap();
  const pc = new RTCPeerConnection({iceServers});
  for (const track of stream.getTracks()) {
    const transceiver = pc.addTransceiver(track, {direction: 'sendonly', streams: [stream]});
    if (track.kind === 'video') preferCodec(transceiver, codecSelect.value);
  }
  const current = new Session(pc, `/api/whip/publish/${room}`, {
    token: tokenInput.value.trim(),
    onEnd: (how) => (how === 'closed'
      ? end(current, `The server ended the session: room ${room} is closed.`, {serverEnded: true})
      : end(current, 'The connection to the server was lost. Press Start publishing to go ' +
        'live again.', {serverEnded: false})),
  });
  session = current;
  debug.pc = pc;
  debug.room = room;
  pc.addEventListener('connectionstatechange', () => onConnectionState(current, room));
  try {
    await current.start();
  } catch (error) {
    if (session !== current) return; // stopped meanwhile
    await teardown();
    setState('preview');
    setStatus(status, explain(error, {role: 'publisher', room}), 'error');
    return;
  }
  if (session !== current) return; // stopped while the offer was on its way
  monitor = new StatsMonitor(pc, 'outbound', (summary) => {
    debug.stats = summary;
    renderStats(statsList, summary);
  });
  monitor.start();
}

function onConnectionState(current, room) {
  if (session !== current) return;
  const state = current.pc.connectionState;
  if (state === 'connected') {
    setState('live');
    setStatus(status, `Live in room ${room}.`, 'ok');
    const link = new URL(playerLink(room), window.location.href).href;
    watchLink.href = link;
    watchLink.textContent = link;
    watch.hidden = false;
    watchRoom(current, room);
  } else if (state === 'disconnected') {
    setStatus(status, 'The connection is interrupted; waiting for it to come back…', 'warn');
  }
}

/** While live, the room must stay listed: if it goes, the server ended this session. */
function watchRoom(current, room) {
  clearTimeout(roomCheck);
  roomCheck = setTimeout(async () => {
    if (session !== current) return;
    try {
      const rooms = await getJSON('/api/rooms');
      const mine = rooms.find((r) => r.name === room);
      if (session !== current) return;
      if (!mine || !mine.hasPublisher) {
        end(current, `The server ended the session: room ${room} is closed.`,
          {serverEnded: true});
        return;
      }
      const viewers = mine.subscribers ?? 0;
      setStatus(status, `Live in room ${room}: ${viewers} viewer${viewers === 1 ? '' : 's'}.`,
        'ok');
    } catch {
      // the list is only a hint; the peer connection's state says the rest
    }
    watchRoom(current, room);
  }, ROOM_CHECK_MS);
}

async function end(current, message, {serverEnded}) {
  if (session !== current) return;
  await teardown({serverEnded});
  setState('preview');
  setStatus(status, message, serverEnded ? 'warn' : 'error');
}

async function teardown({serverEnded = false} = {}) {
  clearTimeout(roomCheck);
  monitor?.stop();
  monitor = null;
  const current = session;
  session = null;
  debug.stats = null;
  renderStats(statsList, null);
  watch.hidden = true;
  if (current) {
    if (serverEnded) current.forget();
    else await current.stop();
  }
}

async function stop() {
  const room = debug.room;
  setState('stopping');
  setStatus(status, 'Stopping…');
  await teardown();
  setState('preview');
  setStatus(status, `Stopped. Room ${room} is closed.`);
}

async function main() {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (debug.state === 'preview') start();
  });
  stopButton.addEventListener('click', stop);
  for (const select of [cameraSelect, micSelect, qualitySelect]) {
    select.addEventListener('change', reopen);
  }
  // Leaving the page ends the session, without waiting for the answer.
  window.addEventListener('pagehide', () => {
    clearTimeout(roomCheck);
    monitor?.stop();
    session?.stop({keepalive: true});
    session = null;
  });
  window.addEventListener('pageshow', (event) => {
    if (event.persisted && debug.state !== 'preview') {
      setState('preview');
      setStatus(status, 'Publishing stopped when you left the page.', 'warn');
    }
  });
  roomInput.value = query('room') || 'demo';
  markCodecs();
  if (!navigator.mediaDevices?.getUserMedia) {
    setState('unavailable');
    setStatus(status, 'This page cannot use the camera here: browsers allow it only on secure ' +
      'pages. Open golive over HTTPS (TLS_CERT_FILE, TLS_KEY_FILE) or at http://localhost.',
    'error');
    return;
  }
  setState('preview');
  const [settings] = await Promise.all([bootstrap(), reopen()]);
  if (settings.authEnabled) $('token-need').textContent = '(this server may need one)';
}

main();
