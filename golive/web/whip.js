// golive's WHIP (RFC 9725) and WHEP client: one session of a peer connection with a server.
// No DOM here: the pages build the peer connection, this module speaks HTTP for it.
//
//   const session = new Session(pc, '/api/whip/publish/room1', {token});
//   await session.start();   // POST the offer, apply the answer, trickle candidates (PATCH)
//   await session.stop();    // DELETE the session resource, close the peer connection

export const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** An answer other than the one expected, with what the server said about it. */
export class HttpError extends Error {
  constructor(status, serverMessage, retryAfter) {
    super(`HTTP ${status}${serverMessage ? `: ${serverMessage}` : ''}`);
    this.name = 'HttpError';
    this.status = status;
    this.serverMessage = serverMessage;
    this.retryAfter = retryAfter; // seconds, or null
  }
}

/** The server could not be reached at all (fetch itself failed). */
export class NetworkError extends Error {
  constructor(cause) {
    super('network error', {cause});
    this.name = 'NetworkError';
  }
}

export function authHeaders(token, headers = {}) {
  return token ? {...headers, Authorization: `Bearer ${token}`} : {...headers};
}

/** fetch(), with a failure to connect turned into a NetworkError. */
export async function request(url, options) {
  try {
    return await fetch(url, options);
  } catch (error) {
    if (error.name === 'AbortError' || error.name === 'TimeoutError') throw error;
    throw new NetworkError(error);
  }
}

/** The HttpError of a response: its JSON {"error": ...} message and Retry-After. */
export async function httpError(response) {
  let message = '';
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      message = typeof body.error === 'string' ? body.error : text;
    } catch {
      message = text;
    }
  } catch {
    // the body could not be read: the status says enough
  }
  const retryAfter = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
  return new HttpError(response.status, message.slice(0, 200),
    Number.isFinite(retryAfter) ? retryAfter : null);
}

/** GET a JSON document (the rooms, the bootstrap, the recordings). */
export async function getJSON(url, {token = '', signal} = {}) {
  const response = await request(url, {headers: authHeaders(token), signal, cache: 'no-store'});
  if (!response.ok) throw await httpError(response);
  return response.json();
}

function sdpAttribute(sdp, name) {
  const match = new RegExp(`^a=${name}:(\\S+)`, 'm').exec(sdp);
  return match ? match[1] : null;
}

/**
 * One WHIP or WHEP session. The offer is sent as soon as it is made (trickle ICE): the
 * candidates gathered afterwards go in PATCH requests (RFC 8840 fragments), batched while a
 * request is under way. A server that refuses PATCH (4xx) is tolerated: the connection then
 * relies on the candidates in the answer and on peer-reflexive ones.
 */
export class Session {
  constructor(pc, endpoint, {token = '', onEnd = null} = {}) {
    this.pc = pc;
    this.onEnd = onEnd; // called with 'closed' (the server ended the session) or 'failed'
    this.endpoint = new URL(endpoint, globalThis.location.href).href;
    this.token = token;
    this.location = null; // the session resource, from the Location header
    this.etag = null;
    this.offer = '';
    this.pending = []; // candidates not sent yet
    this.gathered = false; // end of candidates seen, not sent yet
    this.trickling = null; // the PATCH under way
    this.trickleRefused = false;
    this.ended = false;
    this.onCandidate = (event) => this.queue(event.candidate);
    pc.addEventListener('icecandidate', this.onCandidate);
  }

  /** POST the offer; resolves once the answer is applied. Throws HttpError or NetworkError. */
  async start() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    this.offer = this.pc.localDescription.sdp;
    const response = await request(this.endpoint, {
      method: 'POST',
      headers: authHeaders(this.token, {'Content-Type': 'application/sdp'}),
      body: this.offer,
    });
    if (response.status !== 201) throw await httpError(response);
    const location = response.headers.get('Location');
    this.location = location ? new URL(location, this.endpoint).href : null;
    this.etag = response.headers.get('ETag');
    const answer = await response.text();
    if (this.ended) {
      await this.remove(); // stopped while the offer was on its way: end what it made
      return;
    }
    await this.pc.setRemoteDescription({type: 'answer', sdp: answer});
    this.watchTransport();
    this.trickle();
  }

  /**
   * Tell onEnd when the connection ends without a stop() here. A server that ends the
   * session (a publisher leaving ends its viewers' sessions) closes DTLS: the transport says
   * 'closed' at once, while the peer connection itself would still say 'connected'.
   */
  watchTransport() {
    const transport = this.pc.getTransceivers().map((t) => t.sender.transport).find(Boolean);
    const report = (state) => {
      if (!this.ended && this.onEnd) this.onEnd(state);
    };
    transport?.addEventListener('statechange', () => {
      if (transport.state === 'closed' || transport.state === 'failed') report(transport.state);
    });
    this.pc.addEventListener('connectionstatechange', () => {
      if (this.pc.connectionState === 'failed') report('failed');
    });
  }

  queue(candidate) {
    if (!candidate || !candidate.candidate) {
      this.gathered = true;
    } else if (!this.offer.includes(candidate.candidate)) {
      this.pending.push(candidate); // (those already in the offer are not sent twice)
    }
    this.trickle();
  }

  trickle() {
    if (!this.location || this.trickling || this.ended || this.trickleRefused) return;
    if (this.pending.length === 0 && !this.gathered) return;
    const candidates = this.pending.splice(0);
    const end = this.gathered;
    this.gathered = false;
    this.trickling = this.patch(this.fragment(candidates, end)).finally(() => {
      this.trickling = null;
      this.trickle();
    });
  }

  /** An RFC 8840 fragment: the ICE credentials, then each media section's candidates. */
  fragment(candidates, end) {
    const sdp = this.pc.localDescription.sdp;
    const lines = [`a=ice-ufrag:${sdpAttribute(sdp, 'ice-ufrag')}`,
      `a=ice-pwd:${sdpAttribute(sdp, 'ice-pwd')}`];
    const byMid = new Map();
    for (const candidate of candidates) {
      const mid = candidate.sdpMid ?? String(candidate.sdpMLineIndex ?? 0);
      if (!byMid.has(mid)) byMid.set(mid, []);
      byMid.get(mid).push(candidate);
    }
    for (const [mid, group] of byMid) {
      lines.push('m=audio 9 RTP/AVP 0', `a=mid:${mid}`);
      for (const candidate of group) lines.push(`a=${candidate.candidate}`);
    }
    if (end) lines.push('a=end-of-candidates');
    return lines.join('\r\n') + '\r\n';
  }

  async patch(fragment) {
    try {
      const response = await request(this.location, {
        method: 'PATCH',
        headers: authHeaders(this.token, {
          'Content-Type': 'application/trickle-ice-sdpfrag',
          'If-Match': this.etag ?? '*',
        }),
        body: fragment,
      });
      if (response.status === 405 || response.status === 501) this.trickleRefused = true;
      // Any other refusal is tolerated: ICE goes on with the candidates both sides know.
    } catch {
      // the same for a PATCH that could not be sent
    }
  }

  /**
   * End the session: DELETE its resource, then close the peer connection (in that order, so
   * that the server does not end the session on the closing connection first). keepalive
   * lets the DELETE outlive the page (on pagehide), and is not waited for. Never throws.
   */
  async stop({keepalive = false} = {}) {
    if (this.ended) return;
    this.ended = true;
    this.pc.removeEventListener('icecandidate', this.onCandidate);
    const removing = this.remove({keepalive});
    if (!keepalive) await removing;
    this.pc.close();
  }

  async remove({keepalive = false} = {}) {
    const location = this.location;
    this.location = null;
    if (!location) return;
    await request(location, {
      method: 'DELETE',
      headers: authHeaders(this.token),
      keepalive,
      signal: AbortSignal.timeout(5000),
    }).catch(() => null);
  }

  /** The server ended the session itself (its room closed): close without a DELETE. */
  forget() {
    this.ended = true;
    this.pc.removeEventListener('icecandidate', this.onCandidate);
    this.pc.close();
  }
}

/** What went wrong, as a sentence for the person using the page (`role`: publisher or viewer). */
export function explain(error, {role, room}) {
  if (error instanceof NetworkError) {
    return 'Cannot reach the server. Check that golive is running and your network is up.';
  }
  if (!(error instanceof HttpError)) {
    return `Something went wrong in this browser: ${error.message || error}`;
  }
  const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : ' Try again soon.';
  switch (error.status) {
    case 400:
      return error.serverMessage === 'invalid room name'
        ? 'Room names are 1 to 64 letters, digits, "-" or "_".'
        : 'The server could not use what this browser offered (no codec in common?).';
    case 401:
      return `The token is missing or wrong: ${role === 'publisher' ? 'publishing to' : 'watching'} room ${room} needs a valid token.`;
    case 403:
      return role === 'viewer' && error.serverMessage === 'subscriber limit reached'
        ? `Room ${room} has as many viewers as it allows.${wait}`
        : 'This token may not do that.';
    case 404:
      return role === 'viewer'
        ? `Room ${room} has no publisher right now.`
        : 'The server does not know this session any more.';
    case 409:
      return `Room ${room} already has a publisher. Pick another room name, or stop the other publisher first.`;
    case 413:
    case 415:
      return `The server refused this browser's request (${error.serverMessage || error.status}).`;
    case 429:
      return `Too many requests from this address.${wait}`;
    case 503:
      return `The server is busy or shutting down.${wait}`;
    default:
      return `The server answered ${error.status}${error.serverMessage ? ` (${error.serverMessage})` : ''}.`;
  }
}
