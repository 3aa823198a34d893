// Wire protocol v1 as the relay speaks it (docs/wire-protocol.md): control
// frames on the one bidirectional stream, media datagrams with a 10-byte
// header (datagram format 2). Nothing here knows about the page.

export const MAX_FRAME_LEN = 16 * 1024;
export const HEADER_LEN = 10;
export const DATAGRAM_VERSION = 2;
export const FLAG_KEYFRAME = 0b00001;
export const FLAG_END_OF_FRAME = 0b00010;
export const FLAG_DISCARDABLE = 0b00100;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One control frame: u32 BE length, version byte 1, JSON. */
export function encodeControl(message) {
  const json = encoder.encode(JSON.stringify(message));
  const frame = new Uint8Array(5 + json.length);
  new DataView(frame.buffer).setUint32(0, json.length + 1);
  frame[4] = 1;
  frame.set(json, 5);
  return frame;
}

/** Splits a byte stream into control messages. */
export class ControlDecoder {
  constructor() {
    this.buf = new Uint8Array(0);
  }

  push(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
  }

  /** The next whole message, or null; throws on a malformed frame. */
  next() {
    if (this.buf.length < 4) return null;
    const len = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0);
    if (len < 1 || len > MAX_FRAME_LEN) throw new Error(`control frame of ${len} bytes`);
    if (this.buf.length < 4 + len) return null;
    if (this.buf[4] !== 1) throw new Error(`control frame version ${this.buf[4]}`);
    const json = decoder.decode(this.buf.subarray(5, 4 + len));
    this.buf = this.buf.slice(4 + len);
    return JSON.parse(json);
  }
}

/** Parses a datagram's header; null if it is not datagram format 2. */
export function parseHeader(datagram) {
  if (datagram.length < HEADER_LEN || datagram[0] >> 5 !== DATAGRAM_VERSION) return null;
  const view = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  return {
    flags: datagram[0] & 0b11111,
    track: view.getUint32(1),
    sequence: view.getUint32(5),
    info: datagram[9],
  };
}

/** Writes a datagram header into `out` (at least HEADER_LEN bytes). */
export function writeHeader(out, track, sequence, flags, info = 0) {
  out[0] = (DATAGRAM_VERSION << 5) | (flags & 0b111);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  view.setUint32(1, track);
  view.setUint32(5, sequence);
  out[9] = info & 0xff;
}

/** The `info` byte of a video datagram of spatial layer `layer`. */
export function layerInfo(layer) {
  return (layer & 0b11) << 6;
}

/** The spatial layer of a video datagram's `info` byte. */
export function infoLayer(info) {
  return info >> 6;
}

/**
 * The `info` byte of an audio datagram (RFC 6464's encoding): `voice`
 * and the level in -dBov, 0 (loudest) to 127 (silence).
 */
export function audioInfo(voice, dbov) {
  return (voice ? 0x80 : 0) | Math.max(0, Math.min(127, Math.round(dbov)));
}

/** An audio datagram's level in -dBov (127: silence). */
export function infoLevel(info) {
  return info & 0x7f;
}

/** Close codes the relay uses (docs/wire-protocol.md). */
export const CLOSE = {
  NORMAL: 0,
  TICKET_REFUSED: 1,
  PROTOCOL: 2,
  SLOW_CONTROL: 3,
  GOING_AWAY: 4,
  KICKED: 5,
  CONFERENCE_ENDED: 6,
  CASCADE_REFUSED: 7,
  MOVED: 8,
  TOO_MANY_CONNECTIONS: 9,
  RATE_LIMITED: 10,
};

/** Codes of `error` control messages (docs/wire-protocol.md). */
export const ERROR = {
  BAD_MESSAGE: 1,
  NOT_PERMITTED: 2,
  UNKNOWN_TRACK: 3,
  TOO_MANY_TRACKS: 4,
  OUT_OF_ORDER: 5,
  NOT_OWNER: 6,
  RATE_LIMITED: 7,
  NOT_ENCRYPTED: 8,
};
