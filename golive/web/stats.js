// Live statistics of a peer connection: getStats() once a second, summed up for a person.

function add(total, value) {
  return typeof value === 'number' ? (total ?? 0) + value : total;
}

/**
 * One sample of `pc`'s statistics. `direction` is 'outbound' (a publisher: what it sends, and
 * what the server's receiver reports say was lost) or 'inbound' (a viewer: what it receives).
 */
export async function summarize(pc, direction) {
  const report = await pc.getStats();
  const codecs = new Map();
  report.forEach((s) => {
    if (s.type === 'codec') codecs.set(s.id, s.mimeType);
  });
  const summary = {
    direction, bytes: null, packets: null, packetsLost: null,
    width: null, height: null, fps: null, frames: null, codec: null,
  };
  const rtp = direction === 'outbound' ? 'outbound-rtp' : 'inbound-rtp';
  report.forEach((s) => {
    if (s.type === rtp) {
      summary.bytes = add(summary.bytes, direction === 'outbound' ? s.bytesSent : s.bytesReceived);
      summary.packets = add(summary.packets,
        direction === 'outbound' ? s.packetsSent : s.packetsReceived);
      if (direction === 'inbound') summary.packetsLost = add(summary.packetsLost, s.packetsLost);
      if (s.kind === 'video') {
        summary.width = s.frameWidth ?? summary.width;
        summary.height = s.frameHeight ?? summary.height;
        summary.fps = s.framesPerSecond ?? summary.fps;
        summary.frames = (direction === 'outbound' ? s.framesEncoded : s.framesDecoded)
          ?? summary.frames;
        summary.codec = codecs.get(s.codecId)?.split('/')[1] ?? summary.codec;
      }
    } else if (s.type === 'remote-inbound-rtp' && direction === 'outbound') {
      summary.packetsLost = add(summary.packetsLost, s.packetsLost);
    }
  });
  return summary;
}

/** Samples `pc` every second and hands each summary, with its bitrate, to `onSample`. */
export class StatsMonitor {
  constructor(pc, direction, onSample) {
    this.pc = pc;
    this.direction = direction;
    this.onSample = onSample;
    this.timer = null;
    this.previous = null; // {bytes, at}
  }

  start() {
    this.stop();
    this.timer = setInterval(() => this.sample(), 1000);
    this.sample();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async sample() {
    if (this.pc.connectionState === 'closed') return;
    let summary;
    try {
      summary = await summarize(this.pc, this.direction);
    } catch {
      return; // closed meanwhile
    }
    const at = performance.now();
    summary.kbps = null;
    if (this.previous && summary.bytes !== null && at > this.previous.at) {
      const bits = (summary.bytes - this.previous.bytes) * 8;
      summary.kbps = Math.max(0, bits / (at - this.previous.at)); // bits per ms = kbit/s
    }
    this.previous = {bytes: summary.bytes ?? 0, at};
    if (this.timer !== null) this.onSample(summary);
  }
}

/** The summary as the texts of the statistics list (`dd[data-stat]` elements). */
export function describe(summary) {
  const lost = summary.packetsLost ?? 0;
  const total = (summary.packets ?? 0) + (summary.direction === 'inbound' ? lost : 0);
  const percent = total > 0 ? (100 * lost) / total : 0;
  return {
    bitrate: summary.kbps === null ? '–'
      : summary.kbps >= 1000 ? `${(summary.kbps / 1000).toFixed(2)} Mbit/s`
        : `${Math.round(summary.kbps)} kbit/s`,
    resolution: summary.width && summary.height ? `${summary.width} × ${summary.height}` : '–',
    fps: typeof summary.fps === 'number' ? `${Math.round(summary.fps)} fps` : '–',
    loss: summary.packetsLost === null ? '–' : `${lost} (${percent.toFixed(1)} %)`,
    frames: summary.frames === null ? '–' : String(summary.frames),
    codec: summary.codec ?? '–',
  };
}

/** Fill `list`'s `[data-stat]` elements from a summary (or clear them with null). */
export function render(list, summary) {
  const texts = summary ? describe(summary) : {};
  for (const element of list.querySelectorAll('[data-stat]')) {
    element.textContent = texts[element.dataset.stat] ?? '–';
  }
}
