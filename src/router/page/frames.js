// The payload format inside each media datagram
// (docs/wire-protocol.md#frames-in-datagrams-payload-format-v1),
// the same as src/client/frames.rs: a 17-byte header (version 1, frame
// number u32, fragment index u16, fragment count u16, capture time in
// microseconds since the Unix epoch u64, all big-endian), then the
// fragment's bytes.

import { HEADER_LEN as WIRE_HEADER, FLAG_END_OF_FRAME, FLAG_KEYFRAME, parseHeader, writeHeader } from "./wire.js";

export const VERSION = 1;
export const HEADER_LEN = 17;
/** Largest datagram sent, headers included (see src/client/frames.rs). */
export const MAX_DATAGRAM = 1100;
export const MAX_FRAGMENTS = 1024;
/** Frames dropped while waiting for a keyframe before asking again. */
export const ASK_AGAIN = 30;

/** Microseconds since the Unix epoch, from the page's high-resolution clock. */
export function nowMicros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

export class Packetizer {
  /**
   * `reserve`: bytes each datagram must leave free for what is added after
   * packetisation (end-to-end encryption: e2ee.js OVERHEAD), so that the
   * datagram sent is no larger than `maxDatagram` either way.
   */
  constructor(track, maxDatagram, reserve = 0) {
    this.track = track;
    this.sequence = 0;
    this.frame = 0;
    this.maxDatagram = Math.min(maxDatagram, MAX_DATAGRAM);
    this.reserve = reserve;
  }

  /**
   * The datagrams of one frame (`data` a Uint8Array); `info` is the
   * wire header's info byte (wire.js layerInfo / audioInfo).
   */
  packetize(data, keyframe, captureMicros, info = 0) {
    const room = this.maxDatagram - WIRE_HEADER - HEADER_LEN - this.reserve;
    if (room <= 0) throw new Error(`datagrams of ${this.maxDatagram} bytes leave no room`);
    const count = Math.max(1, Math.ceil(data.length / room));
    if (count > MAX_FRAGMENTS) throw new Error(`a frame of ${data.length} bytes is too large`);
    const number = this.frame;
    this.frame = (this.frame + 1) >>> 0;
    const out = [];
    for (let i = 0; i < count; i++) {
      const chunk = data.subarray(i * room, Math.min(data.length, (i + 1) * room));
      const d = new Uint8Array(WIRE_HEADER + HEADER_LEN + chunk.length);
      let flags = keyframe ? FLAG_KEYFRAME : 0;
      if (i + 1 === count) flags |= FLAG_END_OF_FRAME;
      writeHeader(d, this.track, this.sequence, flags, info);
      this.sequence = (this.sequence + 1) >>> 0;
      const view = new DataView(d.buffer, WIRE_HEADER);
      d[WIRE_HEADER] = VERSION;
      view.setUint32(1, number);
      view.setUint16(5, i);
      view.setUint16(7, count);
      view.setBigUint64(9, BigInt(captureMicros));
      d.set(chunk, WIRE_HEADER + HEADER_LEN);
      out.push(d);
    }
    return out;
  }
}

/** Puts one track's frames back together; see Reassembler in frames.rs. */
export class Reassembler {
  constructor(video) {
    this.video = video;
    this.current = null;
    this.needKeyframe = video;
    this.sinceAsked = null;
    this.last = null;
    this.frames = 0;
    this.keyframes = 0;
    this.lostFrames = 0;
    this.badDatagrams = 0;
  }

  /** Returns {frame, wantKeyframe}; frame is {number, keyframe, captureMicros, data}. */
  push(datagram) {
    const out = { frame: null, wantKeyframe: false };
    const header = parseHeader(datagram);
    const p = datagram.subarray(WIRE_HEADER);
    if (!header || p.length < HEADER_LEN || p[0] !== VERSION) {
      this.badDatagrams++;
      return out;
    }
    const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const f = {
      frame: view.getUint32(1),
      index: view.getUint16(5),
      count: view.getUint16(7),
      captureMicros: Number(view.getBigUint64(9)),
    };
    if (f.count === 0 || f.count > MAX_FRAGMENTS || f.index >= f.count) {
      this.badDatagrams++;
      return out;
    }
    if (this.last !== null) {
      const ahead = (f.frame - this.last) >>> 0;
      if (ahead === 0 || ahead > 0x7fffffff) return out;
    }
    // A fragment of a frame older than the one being put together arrived
    // late: that frame was counted lost when this one began.
    if (this.current && ((f.frame - this.current.frame) >>> 0) > 0x7fffffff) return out;
    if (this.current && this.current.frame !== f.frame) {
      this.lostFrames++;
      this.last = this.current.frame;
      this.current = null;
      this.dropDependants(out);
    }
    if (this.last !== null && !this.current) {
      const skipped = ((f.frame - this.last) >>> 0) - 1;
      if (skipped > 0) {
        this.lostFrames += skipped;
        this.dropDependants(out);
      }
    }
    if (!this.current) {
      this.current = {
        frame: f.frame,
        count: f.count,
        captureMicros: f.captureMicros,
        keyframe: (header.flags & FLAG_KEYFRAME) !== 0,
        parts: new Array(f.count),
        have: 0,
      };
    }
    const c = this.current;
    if (c.count !== f.count) {
      this.badDatagrams++;
      return out;
    }
    if (!c.parts[f.index]) {
      c.parts[f.index] = p.slice(HEADER_LEN);
      c.have++;
    }
    if (c.have === c.count) {
      this.current = null;
      this.last = c.frame;
      if (c.keyframe) {
        this.needKeyframe = false;
        this.sinceAsked = null;
      }
      if (this.needKeyframe) {
        // Joined mid-stream, or the request went unanswered: ask (again).
        this.lostFrames++;
        this.ask(out);
        return out;
      }
      this.frames++;
      if (c.keyframe) this.keyframes++;
      const len = c.parts.reduce((n, part) => n + part.length, 0);
      const data = new Uint8Array(len);
      let at = 0;
      for (const part of c.parts) {
        data.set(part, at);
        at += part.length;
      }
      out.frame = { number: c.frame, keyframe: c.keyframe, captureMicros: c.captureMicros, data };
    }
    return out;
  }

  dropDependants(out) {
    if (!this.video) return;
    this.needKeyframe = true;
    this.ask(out);
  }

  /** Asks for a keyframe once, and again every ASK_AGAIN frames dropped. */
  ask(out) {
    if (this.sinceAsked === null || this.sinceAsked >= ASK_AGAIN) {
      out.wantKeyframe = true;
      this.sinceAsked = 0;
    } else {
      this.sinceAsked++;
    }
  }
}
