"""Debian's Chromium, driven by Playwright: a WHIP publisher and a WHEP viewer in real pages.

Never a downloaded browser: Playwright launches ``/usr/bin/chromium``. The pages are the
server's own origin (``/healthz``), so the scripts below call golive same-origin, exactly as
golive's web pages will.
"""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]

# Shared by both scripts: wait for ICE gathering, then POST the complete offer.
_NEGOTIATE = """
async function negotiate(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
    });
  }
  const response = await fetch(url, {
    method: 'POST',
    headers: {'Content-Type': 'application/sdp'},
    body: pc.localDescription.sdp,
  });
  const text = await response.text();
  if (response.status === 201) {
    await pc.setRemoteDescription({type: 'answer', sdp: text});
  }
  return {status: response.status, body: text, location: response.headers.get('Location')};
}
"""

PUBLISH = (
    "async ({room, codec}) => {"
    + _NEGOTIATE
    + """
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 320, height: 240, frameRate: 15}, audio: true});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) {
    const transceiver = pc.addTransceiver(track, {direction: 'sendonly'});
    if (track.kind === 'video') {
      const all = RTCRtpSender.getCapabilities('video').codecs;
      const wanted = all.filter((c) => c.mimeType.toLowerCase() === 'video/' + codec);
      if (wanted.length === 0) return {status: 0, body: 'codec not available: ' + codec};
      transceiver.setCodecPreferences(wanted);
    }
  }
  window.publisher = pc;
  return await negotiate(pc, '/api/whip/publish/' + room);
}"""
)

PLAY = (
    "async ({room}) => {"
    + _NEGOTIATE
    + """
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = true;
  video.playsInline = true;
  document.body.appendChild(video);
  const stream = new MediaStream();
  video.srcObject = stream;
  pc.addEventListener('track', (event) => stream.addTrack(event.track));
  window.viewer = pc;
  window.video = video;
  return await negotiate(pc, '/api/whep/play/' + room);
}"""
)

VIDEO_STATS = """
async () => {
  const stats = await window.viewer.getStats();
  let result = {framesDecoded: 0, packetsLost: 0, codec: null};
  const codecs = {};
  stats.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      result = {framesDecoded: s.framesDecoded || 0, packetsLost: s.packetsLost || 0,
                codec: codecs[s.codecId] || null};
    }
  });
  result.videoWidth = window.video.videoWidth;
  return result;
}
"""
