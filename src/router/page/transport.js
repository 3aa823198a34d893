// The two ways to a relay, with one interface for call.js: WebTransport
// (HTTP/3 over QUIC: the control stream and unreliable datagrams, as
// docs/wire-protocol.md says) and, where UDP or WebTransport is missing,
// WebSocket (over TCP: the same control bytes and the same datagrams,
// each message marked with which it carries).
//
// Both offer: `kind`; open() (resolves once ready to send); sendControl
// (one whole control frame); receiveControl() (the next control bytes, or
// null once the connection is done); receiveDatagrams(handler);
// sendDatagram(d) (false if dropped); congested(); maxDatagram;
// close(code, reason) with wire close codes; `closed`, resolving with
// {closeCode, reason} (closeCode a wire close code, or null when the
// connection broke without one).

import { MAX_DATAGRAM } from "./frames.js";

/** Datagrams the browser may hold unsent before frames are dropped. */
const OUTGOING_DATAGRAMS = 64;
/**
 * Media late by more than this is worth nothing: the browser drops it
 * rather than queue it behind a slow network or a busy page.
 */
const DATAGRAM_MAX_AGE_MS = 300;

/** The WebSocket subprotocol the relay insists on. */
export const WEBSOCKET_PROTOCOL = "residency-relay-ws-1";
/** First byte of a WebSocket message: control stream bytes, or one datagram. */
const WS_CONTROL = 0x00;
const WS_DATAGRAM = 0x01;
/** The relay closes a WebSocket with this plus the wire close code. */
const WS_CLOSE_BASE = 4000;
const WS_NORMAL_CLOSURE = 1000;
/**
 * Bytes a WebSocket may hold unsent before media is dropped. TCP queues
 * what UDP would lose: past this, queued media only grows late, and the
 * control messages behind it with it. About a second of video.
 */
const WS_BUFFERED_MAX = 64 * 1024;

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

export class WebTransportLink {
  constructor(relay) {
    this.kind = "webtransport";
    this.relay = relay;
    this.maxDatagram = MAX_DATAGRAM;
    this.wt = null;
    this.closed = new Promise((resolve) => {
      this.settleClosed = resolve;
    });
  }

  async open() {
    try {
      await this.connect();
    } catch (e) {
      this.settleClosed({ closeCode: null, reason: String(e) });
      throw e;
    }
  }

  async connect() {
    const relay = this.relay;
    const options = {};
    if (relay.webtransport_pin && relay.cert_sha256) {
      // The certificate in force and its successor (the relay may renew
      // between the join answer and the connection).
      options.serverCertificateHashes = [relay.cert_sha256, relay.cert_sha256_next]
        .filter(Boolean)
        .map((h) => ({ algorithm: "sha-256", value: hexBytes(h) }));
    }
    const wt = new WebTransport(relay.webtransport_url, options);
    this.wt = wt;
    wt.closed.then(
      (info) => this.settleClosed({ closeCode: info?.closeCode ?? null, reason: info?.reason ?? "" }),
      (e) => this.settleClosed({ closeCode: null, reason: String(e) }),
    );
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    this.writer = stream.writable.getWriter();
    this.reader = stream.readable.getReader();
    wt.datagrams.outgoingMaxAge = DATAGRAM_MAX_AGE_MS;
    wt.datagrams.incomingMaxAge = DATAGRAM_MAX_AGE_MS;
    wt.datagrams.outgoingHighWaterMark = OUTGOING_DATAGRAMS;
    this.datagrams = wt.datagrams.writable.getWriter();
    // Firefox keeps the writable's own high-water mark (1) whatever
    // outgoingHighWaterMark says: count what is queued from where the
    // writer starts, so both browsers allow OUTGOING_DATAGRAMS.
    this.room = this.datagrams.desiredSize ?? OUTGOING_DATAGRAMS;
    this.maxDatagram = wt.datagrams.maxDatagramSize || 1200;
  }

  sendControl(frame) {
    return this.writer.write(frame);
  }

  async receiveControl() {
    const { value, done } = await this.reader.read();
    return done ? null : value;
  }

  async receiveDatagrams(handler) {
    const reader = this.wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        handler(value);
      }
    } catch {}
  }

  sendDatagram(d) {
    this.datagrams.write(d).catch(() => {});
    return true;
  }

  /** Whether the browser holds as many datagrams unsent as it should. */
  congested() {
    const size = this.datagrams?.desiredSize;
    return size !== null && size !== undefined && this.room - size >= OUTGOING_DATAGRAMS;
  }

  close(code = 0, reason = "") {
    try {
      this.wt?.close({ closeCode: code, reason });
    } catch {}
  }
}

/**
 * The relay over WebSocket: every message binary, its first byte saying
 * what the rest is (WS_CONTROL: bytes of the control stream, framed as on
 * WebTransport; WS_DATAGRAM: exactly one datagram). Close codes are the
 * wire's plus WS_CLOSE_BASE.
 */
export class WebSocketLink {
  constructor(relay) {
    this.kind = "websocket";
    this.relay = relay;
    // Datagrams as small as on WebTransport: they are forwarded unchanged
    // to participants on either.
    this.maxDatagram = MAX_DATAGRAM;
    this.ws = null;
    this.control = []; // control bytes not yet asked for
    this.waiting = null; // resolve of a receiveControl() waiting for bytes
    this.done = false;
    this.onDatagram = null;
    this.closed = new Promise((resolve) => {
      this.settleClosed = resolve;
    });
  }

  async open() {
    let ws;
    try {
      ws = new WebSocket(this.relay.websocket_url, WEBSOCKET_PROTOCOL);
    } catch (e) {
      this.settleClosed({ closeCode: null, reason: String(e) });
      throw e;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => this.onClose(e);
    await new Promise((resolve, reject) => {
      ws.onopen = () => {
        if (ws.protocol === WEBSOCKET_PROTOCOL) return resolve();
        this.close(0, "no subprotocol");
        reject(new Error("the relay did not agree to the WebSocket subprotocol"));
      };
      // Before open an error is a failure to connect; the browser says no more than that.
      ws.onerror = () => reject(new Error("the WebSocket connection to the relay failed"));
      this.closed.then(() => reject(new Error("the relay closed the WebSocket connection")));
    });
  }

  onMessage(data) {
    if (!(data instanceof ArrayBuffer) || data.byteLength < 1) return this.protocolError();
    const bytes = new Uint8Array(data);
    const rest = bytes.subarray(1);
    if (bytes[0] === WS_CONTROL) {
      if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = null;
        resolve(rest);
      } else {
        this.control.push(rest);
      }
    } else if (bytes[0] === WS_DATAGRAM) {
      this.onDatagram?.(rest);
    } else {
      this.protocolError();
    }
  }

  /** The relay sent what it never sends: close as it would (wire code 2, protocol). */
  protocolError() {
    this.close(2, "unexpected WebSocket message");
  }

  onClose(e) {
    this.done = true;
    this.waiting?.(null);
    this.waiting = null;
    let closeCode = null;
    if (e.code >= WS_CLOSE_BASE && e.code < WS_CLOSE_BASE + 1000) closeCode = e.code - WS_CLOSE_BASE;
    else if (e.code === WS_NORMAL_CLOSURE) closeCode = 0;
    this.settleClosed({ closeCode, reason: e.reason || (closeCode === null ? `WebSocket closed (${e.code})` : "") });
  }

  sendControl(frame) {
    if (this.ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("the WebSocket is closed"));
    this.ws.send(prefixed(WS_CONTROL, frame));
    return Promise.resolve();
  }

  receiveControl() {
    if (this.control.length) return Promise.resolve(this.control.shift());
    if (this.done) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  receiveDatagrams(handler) {
    this.onDatagram = handler;
  }

  /** Sends one datagram, or drops it (false) while TCP is backed up. */
  sendDatagram(d) {
    // Closing: the call is ending, and WebTransport too drops such writes unsaid.
    if (this.ws.readyState !== WebSocket.OPEN) return true;
    if (this.congested()) return false;
    this.ws.send(prefixed(WS_DATAGRAM, d));
    return true;
  }

  congested() {
    return this.ws.bufferedAmount > WS_BUFFERED_MAX;
  }

  close(code = 0, reason = "") {
    try {
      this.ws?.close(code === 0 ? WS_NORMAL_CLOSURE : WS_CLOSE_BASE + code, reason);
    } catch {}
  }
}

function prefixed(kind, bytes) {
  const out = new Uint8Array(1 + bytes.length);
  out[0] = kind;
  out.set(bytes, 1);
  return out;
}
