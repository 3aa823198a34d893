// One connection to a relay: WebTransport session, control stream, the
// camera and microphone encoded with WebCodecs and cut into datagrams, and
// every other participant's tracks reassembled, decoded and drawn. The
// page (app.js) decides what to do when the connection ends.

import { CLOSE, ControlDecoder, ERROR, encodeControl, parseHeader } from "./wire.js";
import { Packetizer, Reassembler, nowMicros } from "./frames.js";
import { OVERHEAD as E2EE_OVERHEAD } from "./e2ee.js";

export const VIDEO = { codec: "vp8", width: 640, height: 360, framerate: 30, bitrate: 600_000, keyframeEvery: 60 };
export const AUDIO = { codec: "opus", sampleRate: 48_000, bitrate: 32_000 };

const SENT_LOG = 4096;
/** Video frames waiting in a decoder before the page drops frames to catch up. */
const MAX_DECODE_QUEUE = 3;
/** Datagrams the browser may hold unsent before frames are dropped. */
const OUTGOING_DATAGRAMS = 64;
const LATENCY_LOG = 4096;
/** Datagrams being encrypted or decrypted at once before more are dropped. */
const CRYPTO_IN_FLIGHT = 256;
/** A track with no datagram for this long is not being rendered (muted, stopped). */
const TRACK_IDLE_MS = 2000;
/** A track whose datagrams fail for this long counts as one we cannot decrypt. */
const FAILING_AFTER_MS = 1000;

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

/** Why a call ended, as the page explains it. */
export class Ended extends Error {
  constructor(kind, detail) {
    super(detail || kind);
    this.kind = kind; // "kicked" | "conference_ended" | "going_away" | "refused" | "lost" | "left"
    this.detail = detail;
  }
}

export class Call {
  /**
   * answer: the router's join answer; media: the MediaStream (may be null);
   * hooks: {roster(map), tile(pid) -> canvas, removeTile(pid), status(text),
   * e2ee(from, data), joined(pid), left(pid, name)}; e2ee: the E2ee of an
   * end-to-end encrypted conference (e2ee.js), or null. With it, every
   * datagram we send is encrypted after packetisation and every datagram
   * we receive is decrypted before reassembly: nothing else is sent or
   * rendered.
   */
  constructor(answer, media, hooks, stats, e2ee = null) {
    this.answer = answer;
    this.media = media;
    this.hooks = hooks;
    this.stats = stats;
    this.e2ee = e2ee;
    this.contexts = {}; // kind -> SFrame context slot (publish order)
    this.sendChain = Promise.resolve(); // encrypted datagrams go out in order
    this.receiveChain = Promise.resolve(); // decrypted datagrams are reassembled in arrival order
    this.inFlight = { encrypt: 0, decrypt: 0 };
    this.tracks = new Map(); // track id -> remote track state
    this.roster = new Map(); // participant id -> display name
    this.requests = new Map(); // publish request -> kind
    this.published = { video: null, audio: null }; // our track ids
    this.packetizers = { video: null, audio: null };
    this.forceKeyframe = false;
    this.muted = { video: false, audio: false };
    this.stopped = false;
    this.endedWith = null;
    this.sendQueue = Promise.resolve();
  }

  /** Connects and sends hello; resolves once welcomed. */
  async connect() {
    const relay = this.answer.relay;
    const options = {};
    if (relay.webtransport_pin && relay.cert_sha256) {
      // The certificate in force and its successor (the relay may renew
      // between this answer and the connection).
      options.serverCertificateHashes = [relay.cert_sha256, relay.cert_sha256_next]
        .filter(Boolean)
        .map((h) => ({ algorithm: "sha-256", value: hexBytes(h) }));
    }
    this.wt = new WebTransport(relay.webtransport_url, options);
    this.closed = this.wt.closed.then(
      (info) => info,
      (e) => ({ closeCode: null, reason: String(e) }),
    );
    await this.wt.ready;
    const stream = await this.wt.createBidirectionalStream();
    this.writer = stream.writable.getWriter();
    this.reader = stream.readable.getReader();
    // Media late by more than this is worth nothing: the browser drops it
    // rather than queue it behind a slow network or a busy page.
    this.wt.datagrams.outgoingMaxAge = 300;
    this.wt.datagrams.incomingMaxAge = 300;
    this.wt.datagrams.outgoingHighWaterMark = OUTGOING_DATAGRAMS;
    this.datagrams = this.wt.datagrams.writable.getWriter();
    this.maxDatagram = this.wt.datagrams.maxDatagramSize || 1200;
    await this.send({ type: "hello", ticket: this.answer.ticket });
    this.decoder = new ControlDecoder();
    const first = await this.nextMessage();
    if (!first) throw new Ended("lost", "the relay closed the connection");
    if (first.type === "error") throw new Ended("refused", first.message);
    if (first.type !== "welcome") throw new Ended("refused", `unexpected ${first.type}`);
    this.me = first.participant;
    this.roster.set(this.me, this.answer.display_name || "you");
    for (const t of first.tracks) this.trackPublished(t);
    this.controlDone = this.controlLoop();
    this.datagramLoop();
    this.publishMedia();
    this.hooks.roster(this.roster);
  }

  async send(message) {
    const frame = encodeControl(message);
    this.sendQueue = this.sendQueue.then(() => this.writer.write(frame)).catch(() => {});
    return this.sendQueue;
  }

  async nextMessage() {
    for (;;) {
      const m = this.decoder.next();
      if (m) return m;
      const { value, done } = await this.reader.read();
      if (done) return null;
      this.decoder.push(value);
    }
  }

  async controlLoop() {
    try {
      for (;;) {
        const m = await this.nextMessage();
        if (!m) break;
        this.onMessage(m);
      }
    } catch (e) {
      this.endedWith ??= new Ended("lost", String(e));
    }
  }

  onMessage(m) {
    switch (m.type) {
      case "published": {
        const kind = this.requests.get(m.request);
        if (!kind) return;
        this.published[kind] = m.track;
        const p = this.packetizers[kind];
        if (p) p.track = m.track;
        // Encrypted datagrams grow by up to E2EE_OVERHEAD: fragments are cut
        // that much shorter, so what is sent is no larger than before.
        else this.packetizers[kind] = new Packetizer(m.track, this.maxDatagram, this.e2ee ? E2EE_OVERHEAD : 0);
        if (kind === "video") this.forceKeyframe = true;
        break;
      }
      case "track_published":
        this.trackPublished(m);
        break;
      case "track_unpublished":
        this.trackGone(m.track);
        break;
      case "participant_joined":
        this.roster.set(m.participant, m.display_name);
        this.hooks.joined?.(m.participant);
        this.hooks.roster(this.roster);
        break;
      case "participant_left":
        this.hooks.left?.(m.participant, this.roster.get(m.participant));
        this.roster.delete(m.participant);
        for (const [id, t] of this.tracks) if (t.participant === m.participant) this.trackGone(id);
        this.hooks.removeTile(m.participant);
        this.hooks.roster(this.roster);
        break;
      case "keyframe_request":
        if (m.track === this.published.video) {
          this.forceKeyframe = true;
          this.stats.keyframeRequestsReceived++;
        }
        break;
      case "kicked":
        this.endedWith = new Ended("kicked", m.reason);
        break;
      case "conference_ended":
        this.endedWith = new Ended("conference_ended");
        break;
      case "going_away":
        // Rejoin through the router now; the relay closes us later.
        this.endedWith = new Ended("going_away", m.reason);
        this.stats.goingAway.push(m.code);
        try {
          this.wt.close({ closeCode: 0, reason: "moving" });
        } catch {}
        break;
      case "e2ee":
        // `host`: the relay says the sender's ticket lets it moderate.
        if (typeof m.from === "string" && typeof m.data === "string") this.hooks.e2ee?.(m.from, m.data, m.host === true);
        break;
      case "error":
        this.stats.errors.push(`${m.code} ${m.message}`);
        // Our publish was not declared encrypted on an e2ee conference: a
        // bug here, and the relay's guard against it. Nothing is sent.
        if (m.code === ERROR.NOT_ENCRYPTED) this.stats.errors.push("the relay refused a track not declared end-to-end encrypted");
        break;
      default:
        break;
    }
  }

  trackPublished(info) {
    if (info.participant === this.me || this.tracks.has(info.track)) return;
    const video = info.kind === "video";
    const remote = {
      id: info.track,
      participant: info.participant,
      kind: info.kind,
      codec: info.codec,
      reassembler: new Reassembler(video),
      decoder: null,
      decoded: 0,
      dropped: 0,
      behind: false,
      decodeErrors: 0,
      bytes: 0,
      keyframeRequests: 0,
      // End to end: declared by its publisher, and how its datagrams fare.
      encrypted: info.encrypted === true,
      decrypted: 0,
      decryptFailures: 0,
      lastAt: null, // performance.now() of the last datagram
      lastOk: false, // whether the last one decrypted
      lastEpoch: null, // the epoch it decrypted under
      failingSince: null,
    };
    this.tracks.set(info.track, remote);
    if (!this.roster.has(info.participant)) {
      // Beyond a cascade link: known by its tracks only.
      this.roster.set(info.participant, "participant on another relay");
      this.hooks.roster(this.roster);
    }
    // On an end-to-end encrypted conference a track not declared encrypted
    // is never subscribed to, let alone rendered; the page marks its sender.
    if (this.e2ee && !remote.encrypted) return;
    this.send({ type: "subscribe", track: info.track });
  }

  trackGone(id) {
    const t = this.tracks.get(id);
    if (!t) return;
    this.tracks.delete(id);
    this.hooks.trackDone(statOf(t));
    try {
      t.decoder?.close();
    } catch {}
  }

  async datagramLoop() {
    const reader = this.wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.onDatagram(value);
      }
    } catch {}
  }

  onDatagram(d) {
    const h = parseHeader(d);
    if (!h) return;
    const t = this.tracks.get(h.track);
    if (!t) return;
    if (this.e2ee) this.onEncryptedDatagram(t, d);
    else this.onPlainDatagram(t, d);
  }

  /**
   * Decrypts a datagram, then reassembles it. Datagrams are decrypted side
   * by side but handed on in the order they arrived. One that fails is
   * counted and dropped: there is no fallback to plaintext.
   */
  onEncryptedDatagram(t, d) {
    t.lastAt = performance.now();
    if (!t.encrypted || this.inFlight.decrypt >= CRYPTO_IN_FLIGHT) {
      this.failed(t);
      return;
    }
    this.inFlight.decrypt++;
    const opening = this.e2ee.open(d);
    this.receiveChain = this.receiveChain
      .then(() => opening)
      .then((r) => {
        this.inFlight.decrypt--;
        if (this.tracks.get(t.id) !== t) return;
        if (!r) return this.failed(t);
        t.decrypted++;
        t.lastOk = true;
        t.lastEpoch = r.epoch;
        t.failingSince = null;
        this.onPlainDatagram(t, r.data);
      })
      .catch((e) => this.stats.errors.push(`after decryption: ${e}`));
  }

  failed(t) {
    t.decryptFailures++;
    t.lastOk = false;
    t.failingSince ??= performance.now();
  }

  onPlainDatagram(t, d) {
    const { frame, wantKeyframe } = t.reassembler.push(d);
    if (wantKeyframe) {
      t.keyframeRequests++;
      this.send({ type: "keyframe_request", track: t.id });
    }
    if (!frame) return;
    t.bytes += frame.data.length;
    this.decode(t, frame);
  }

  decode(t, frame) {
    if (t.kind === "video" && t.codec === VIDEO.codec) {
      if (!t.decoder || t.decoder.state === "closed") {
        if (!frame.keyframe) return;
        const canvas = this.hooks.tile(t.participant, this.roster.get(t.participant));
        const ctx = canvas.getContext("2d");
        t.decoder = new VideoDecoder({
          output: (vf) => {
            if (canvas.width !== vf.displayWidth) canvas.width = vf.displayWidth;
            if (canvas.height !== vf.displayHeight) canvas.height = vf.displayHeight;
            ctx.drawImage(vf, 0, 0);
            const latency = (nowMicros() - vf.timestamp) / 1000;
            vf.close();
            t.decoded++;
            this.stats.latency.push(latency);
            if (this.stats.latency.length > LATENCY_LOG) this.stats.latency.shift();
          },
          error: () => {
            t.decodeErrors++;
          },
        });
        t.decoder.configure({ codec: VIDEO.codec, optimizeForLatency: true });
      }
      // A decoder that falls behind (a slow machine) would draw ever older
      // frames: past a few queued, drop frames up to the next keyframe.
      if (t.decoder.decodeQueueSize > MAX_DECODE_QUEUE || (t.behind && !frame.keyframe)) {
        if (!t.behind) this.send({ type: "keyframe_request", track: t.id });
        t.behind = true;
        t.dropped++;
        return;
      }
      t.behind = false;
      t.decoder.decode(
        new EncodedVideoChunk({
          type: frame.keyframe ? "key" : "delta",
          timestamp: frame.captureMicros,
          data: frame.data,
        }),
      );
    } else if (t.kind === "audio" && t.codec === AUDIO.codec) {
      if (!t.decoder || t.decoder.state === "closed") {
        const generator = new MediaStreamTrackGenerator({ kind: "audio" });
        const sink = generator.writable.getWriter();
        this.hooks.audio(t.participant, new MediaStream([generator]));
        t.decoder = new AudioDecoder({
          output: (data) => {
            t.decoded++;
            sink.write(data).catch(() => data.close());
          },
          error: () => {
            t.decodeErrors++;
          },
        });
        t.decoder.configure({ codec: AUDIO.codec, sampleRate: AUDIO.sampleRate, numberOfChannels: 1 });
      }
      if (t.decoder.decodeQueueSize > MAX_DECODE_QUEUE * 4) {
        t.dropped++;
        return;
      }
      t.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: frame.captureMicros, data: frame.data }));
    } else {
      // Media this page cannot decode (a native client's synthetic frames):
      // counted, shown as a tile without a picture.
      this.hooks.tile(t.participant, this.roster.get(t.participant), `${t.kind} (${t.codec})`);
    }
  }

  /** Sends one encoded frame of `kind` as datagrams. */
  sendFrame(kind, data, keyframe, captureMicros) {
    const p = this.packetizers[kind];
    if (!p || this.muted[kind] || this.stopped) return;
    // The browser cannot send as fast as we encode (a busy machine, a slow
    // link): drop the frame rather than queue it, and start again from a
    // keyframe.
    if ((this.datagrams.desiredSize !== null && this.datagrams.desiredSize <= 0) || this.encryptionBehind()) {
      this.stats.sendDropped[kind]++;
      if (kind === "video") this.forceKeyframe = true;
      return;
    }
    let datagrams;
    try {
      datagrams = p.packetize(data, keyframe, captureMicros);
    } catch (e) {
      this.stats.errors.push(String(e));
      return;
    }
    const frameNumber = p.frame - 1;
    if (this.e2ee) this.sendEncrypted(kind, datagrams);
    else for (const d of datagrams) this.datagrams.write(d).catch(() => {});
    const s = this.stats.sent[kind];
    s.frames++;
    s.bytes += data.length;
    if (keyframe) s.keyframes++;
    this.stats.sentLog.push({ kind, frame: frameNumber >>> 0, bytes: data.length, keyframe });
    if (this.stats.sentLog.length > SENT_LOG) this.stats.sentLog.shift();
  }

  /**
   * Encrypts a frame's datagrams (their counters taken now, in order) and
   * writes them once all are done, after those of earlier frames.
   */
  sendEncrypted(kind, datagrams) {
    const context = this.contexts[kind];
    this.inFlight.encrypt += datagrams.length;
    const sealing = Promise.all(datagrams.map((d) => this.e2ee.encryptDatagram(d, context)));
    this.sendChain = this.sendChain
      .then(() => sealing)
      .then((sealed) => {
        if (this.stopped) return;
        for (const d of sealed) this.datagrams.write(d).catch(() => {});
      })
      .catch((e) => this.stats.errors.push(`encryption: ${e}`))
      .finally(() => {
        this.inFlight.encrypt -= datagrams.length;
      });
  }

  /** Whether frames of `kind` should be dropped because encryption lags behind. */
  encryptionBehind() {
    return this.e2ee !== null && this.inFlight.encrypt >= CRYPTO_IN_FLIGHT;
  }

  /** A publish request; declared encrypted on an end-to-end encrypted conference. */
  async publish(request, kind, codec) {
    this.requests.set(request, kind);
    const message = { type: "publish", request, kind, codec };
    if (this.e2ee) {
      message.encrypted = true;
      // The track's slot in its SFrame KIDs: 0 for the first published.
      this.contexts[kind] ??= Object.keys(this.contexts).length;
    }
    await this.send(message);
  }

  async publishMedia() {
    if (!this.media) return;
    const video = this.media.getVideoTracks()[0];
    const audio = this.media.getAudioTracks()[0];
    if (video) {
      await this.publish(1, "video", VIDEO.codec);
      this.encodeVideo(video);
    }
    if (audio) {
      await this.publish(2, "audio", AUDIO.codec);
      this.encodeAudio(audio);
    }
  }

  /** Sends an `e2ee` control message: {to, data}, or {data} for everyone. */
  sendE2ee({ to, data }) {
    const message = { type: "e2ee", data };
    if (to) message.to = to;
    return this.send(message);
  }

  /**
   * How each remote track fares end to end, for the page's badge, roster
   * and status: [{participant, track, kind, state}] where state is "ok"
   * (its last datagram decrypted under the current epoch), "old_epoch"
   * (under the previous one), "settling" (failing for less than a
   * second), "failing" or "plaintext" (not declared encrypted). Tracks
   * idle for 2 s (muted, stopped) are left out: nothing of them is shown.
   */
  e2eeTracks() {
    const out = [];
    const now = performance.now();
    const epoch = this.e2ee?.epoch;
    for (const t of this.tracks.values()) {
      let state;
      if (!t.encrypted) state = "plaintext";
      else if (t.lastAt === null || now - t.lastAt > TRACK_IDLE_MS) continue;
      else if (t.lastOk) state = t.lastEpoch === epoch ? "ok" : "old_epoch";
      else state = now - t.failingSince >= FAILING_AFTER_MS ? "failing" : "settling";
      out.push({ participant: t.participant, track: t.id, kind: t.kind, state });
    }
    return out;
  }

  async encodeVideo(track) {
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    let encoder = null;
    let n = 0;
    while (!this.stopped) {
      const { value: frame, done } = await reader.read();
      if (done) break;
      if (!encoder) {
        encoder = new VideoEncoder({
          output: (chunk) => {
            const data = new Uint8Array(chunk.byteLength);
            chunk.copyTo(data);
            this.sendFrame("video", data, chunk.type === "key", chunk.timestamp);
          },
          error: (e) => this.stats.errors.push(`video encoder: ${e}`),
        });
        encoder.configure({
          codec: VIDEO.codec,
          width: frame.displayWidth,
          height: frame.displayHeight,
          bitrate: VIDEO.bitrate,
          framerate: VIDEO.framerate,
          latencyMode: "realtime",
        });
        this.videoEncoder = encoder;
      }
      // The chunk's timestamp carries the capture time to the subscribers.
      const stamped = new VideoFrame(frame, { timestamp: nowMicros() });
      frame.close();
      if (this.packetizers.video && !this.muted.video && encoder.encodeQueueSize < 3) {
        const keyFrame = this.forceKeyframe || n % VIDEO.keyframeEvery === 0;
        this.forceKeyframe = false;
        encoder.encode(stamped, { keyFrame });
        n = keyFrame ? 1 : n + 1;
      }
      stamped.close();
    }
    try {
      encoder?.close();
    } catch {}
  }

  async encodeAudio(track) {
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    let encoder = null;
    while (!this.stopped) {
      const { value: data, done } = await reader.read();
      if (done) break;
      if (!encoder) {
        encoder = new AudioEncoder({
          output: (chunk) => {
            const bytes = new Uint8Array(chunk.byteLength);
            chunk.copyTo(bytes);
            this.sendFrame("audio", bytes, false, nowMicros());
          },
          error: (e) => this.stats.errors.push(`audio encoder: ${e}`),
        });
        encoder.configure({
          codec: AUDIO.codec,
          sampleRate: data.sampleRate,
          numberOfChannels: data.numberOfChannels,
          bitrate: AUDIO.bitrate,
        });
      }
      if (this.packetizers.audio && !this.muted.audio) encoder.encode(data);
      data.close();
    }
    try {
      encoder?.close();
    } catch {}
  }

  setMuted(kind, muted) {
    this.muted[kind] = muted;
    if (kind === "video" && !muted) this.forceKeyframe = true;
  }

  /** Resolves with why the connection ended. */
  async ended() {
    const info = await this.closed;
    // The relay's last control message (kicked, conference_ended,
    // going_away) may still be on its way to the control loop.
    await Promise.race([this.controlDone, new Promise((r) => setTimeout(r, 500))]);
    this.stopped = true;
    this.stats.closeCodes.push(info.closeCode);
    // What the relay said (its last message) wins; a read error on the
    // control stream is only the close seen from this side, and the close
    // code may still say why.
    if (this.endedWith && this.endedWith.kind !== "lost") return this.endedWith;
    switch (info.closeCode) {
      case CLOSE.KICKED:
        return new Ended("kicked", info.reason);
      case CLOSE.CONFERENCE_ENDED:
        return new Ended("conference_ended");
      case CLOSE.GOING_AWAY:
      case CLOSE.MOVED:
        return new Ended("going_away", info.reason);
      case CLOSE.TICKET_REFUSED:
      case CLOSE.PROTOCOL:
      case CLOSE.RATE_LIMITED:
      case CLOSE.TOO_MANY_CONNECTIONS:
        // Rejoining would be refused again (or is abuse): stop.
        return new Ended("refused", info.reason || `close code ${info.closeCode}`);
      default:
        return this.endedWith ?? new Ended("lost", info.reason);
    }
  }

  async leave() {
    this.stopped = true;
    try {
      await this.send({ type: "leave" });
      this.wt.close({ closeCode: 0, reason: "left" });
    } catch {}
  }

  /** Closes without telling the relay (the relay is gone anyway). */
  drop() {
    this.stopped = true;
    for (const t of this.tracks.values()) {
      try {
        t.decoder?.close();
      } catch {}
    }
    try {
      this.wt.close();
    } catch {}
  }

  trackStats() {
    const out = {};
    for (const t of this.tracks.values()) out[t.id] = statOf(t);
    return out;
  }
}

function statOf(t) {
  const r = t.reassembler;
  return {
    participant: t.participant,
    kind: t.kind,
    codec: t.codec,
    frames: r.frames,
    keyframes: r.keyframes,
    lost: r.lostFrames,
    bytes: t.bytes,
    decoded: t.decoded,
    dropped: t.dropped,
    decodeErrors: t.decodeErrors,
    keyframeRequests: t.keyframeRequests,
    encrypted: t.encrypted,
    decrypted: t.decrypted,
    decryptFailures: t.decryptFailures,
  };
}
