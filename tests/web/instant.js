// A WHEP viewer for measuring instant start, evaluated in a page of the server's origin by
// tests/web/instant.py (the browser test and bench/instant.py). Called with the room's WHEP
// URL; resolves once the answer is set. Then window.instant holds:
//   state: {posted, answered, firstFrame, firstDecoded, firstPresented, codec, decoder,
//     samples, error} (times are wall-clock milliseconds: performance.timeOrigin +
//     performance.now(), the same clock as Python's time.time() * 1000 on this machine),
//     samples being the inbound video stats with the time each was read;
//   firstFrame: a promise of state.firstFrame, the earlier of firstDecoded (the first stats
//     read that shows framesDecoded > 0) and firstPresented (the <video>'s first frame,
//     requestVideoFrameCallback): both come after the first frame was decoded, the earlier
//     one closer to it;
//   close(): stops sampling, DELETEs the session, closes the peer connection.
// Stats are read every fastMs until the first frame is decoded, then every slowMs.
async ({ url, fastMs = 20, slowMs = 100 }) => {
  const now = () => performance.timeOrigin + performance.now();
  const FIELDS = [
    "framesDecoded", "framesReceived", "framesDropped", "keyFramesDecoded",
    "freezeCount", "totalFreezesDuration", "pliCount", "firCount", "nackCount",
    "jitterBufferDelay", "jitterBufferEmittedCount", "jitterBufferTargetDelay",
    "packetsReceived", "packetsLost",
  ];
  const state = {
    posted: null, answered: null, firstFrame: null, firstDecoded: null, firstPresented: null,
    codec: null, decoder: null, samples: [], error: null,
  };
  let resolveFirstFrame;
  const firstFrame = new Promise((resolve) => { resolveFirstFrame = resolve; });
  const firstFrameAt = (at) => {
    if (state.firstFrame === null) {
      state.firstFrame = at;
      resolveFirstFrame(at);
    }
  };
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.append(video);
  const stream = new MediaStream();
  pc.ontrack = (event) => {
    stream.addTrack(event.track);
    if (video.srcObject !== stream) {
      video.srcObject = stream;
      video.play().catch((error) => { state.error = `play: ${error}`; });
    }
  };
  if ("requestVideoFrameCallback" in video) {
    video.requestVideoFrameCallback(() => {
      state.firstPresented = now();
      firstFrameAt(state.firstPresented);
    });
  }

  let location = null;
  let sampling = null;
  const close = async () => {
    clearTimeout(sampling);
    sampling = "closed";
    if (location !== null) {
      await fetch(new URL(location, url), { method: "DELETE" }).catch(() => {});
    }
    pc.close();
  };
  const sample = async () => {
    const reports = await pc.getStats();
    const at = now();
    let inbound = null;
    reports.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") inbound = report;
    });
    if (inbound !== null) {
      const taken = { t: at };
      for (const name of FIELDS) taken[name] = inbound[name] ?? null;
      state.samples.push(taken);
      if (state.codec === null && inbound.codecId) {
        state.codec = reports.get(inbound.codecId)?.mimeType ?? null;
      }
      state.decoder = inbound.decoderImplementation ?? state.decoder;
      if (state.firstDecoded === null && inbound.framesDecoded > 0) {
        state.firstDecoded = at;
        firstFrameAt(at);
      }
    }
  };
  const loop = async () => {
    if (sampling === "closed") return;
    try {
      await sample();
    } catch (error) {
      state.error = `getStats: ${error}`;
    }
    if (sampling !== "closed") {
      sampling = setTimeout(loop, state.firstDecoded === null ? fastMs : slowMs);
    }
  };

  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      pc.onicegatheringstatechange = () => {
        if (pc.iceGatheringState === "complete") resolve();
      };
    });
  }
  state.posted = now();
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status !== 201) {
    pc.close();
    throw new Error(`WHEP POST ${response.status}: ${answer.slice(0, 200)}`);
  }
  location = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  state.answered = now();
  window.instant = { state, firstFrame, close };
  loop();
  return state.posted;
}
