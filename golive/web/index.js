// The live rooms: GET /api/rooms every few seconds, one card per room with a link to watch it.

import {explain, getJSON} from './whip.js';
import {debugHandle, h, playerLink, setStatus} from './ui.js';

const REFRESH_MS = 2000;

const list = document.getElementById('rooms');
const summary = document.getElementById('summary');
const updated = document.getElementById('updated');
const debug = debugHandle('index');
let shown = null; // the rooms as last drawn (JSON), so an unchanged list keeps its focus
let timer = null;
let refreshing = false;

function tracks(room) {
  if (Array.isArray(room.trackList) && room.trackList.length > 0) {
    return [...room.trackList]
      .sort((a, b) => String(b.kind).localeCompare(String(a.kind))) // video first
      .map((track) => `${track.kind} ${String(track.codec).split('/').pop()}`)
      .join(', ');
  }
  return room.tracks === 1 ? '1 track' : `${room.tracks ?? 0} tracks`;
}

function card(room) {
  const viewers = room.subscribers ?? 0;
  const fact = (term, value, attributes = {}) =>
    h('div', {}, h('dt', {}, term), h('dd', attributes, value));
  return h('li', {class: 'panel', 'data-room': room.name},
    h('h2', {}, room.name),
    h('dl', {class: 'facts'},
      fact('Publisher', room.hasPublisher ? 'live' : room.waiting ? 'reconnecting' : 'none',
        {class: room.hasPublisher ? 'live' : null, 'data-field': 'publisher'}),
      fact('Viewers', String(viewers), {'data-field': 'viewers'}),
      fact('Tracks', tracks(room), {'data-field': 'tracks'})),
    h('p', {class: 'buttons'},
      h('a', {class: 'button', href: playerLink(room.name), 'aria-label': `Watch room ${room.name}`},
        'Watch')));
}

function draw(rooms) {
  const text = JSON.stringify(rooms);
  if (text === shown) return;
  shown = text;
  list.replaceChildren(...rooms.map(card));
  const live = rooms.filter((room) => room.hasPublisher).length;
  setStatus(summary, rooms.length === 0
    ? 'No live rooms right now. Publish one from this browser, or with OBS or GStreamer.'
    : `${live} live room${live === 1 ? '' : 's'}.`, rooms.length === 0 ? 'info' : 'ok');
}

async function refresh() {
  clearTimeout(timer);
  if (refreshing) return; // (it schedules the next one)
  refreshing = true;
  try {
    const rooms = await getJSON('/api/rooms');
    rooms.sort((a, b) => a.name.localeCompare(b.name));
    debug.rooms = rooms;
    draw(rooms);
    updated.textContent = `Updated at ${new Date().toLocaleTimeString()}; refreshes by itself.`;
  } catch (error) {
    shown = null;
    setStatus(summary, `Cannot load the rooms. ${explain(error, {role: 'viewer', room: ''})}`,
      'error');
  } finally {
    refreshing = false;
  }
  if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});
refresh();
