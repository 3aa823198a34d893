// One connection to a relay: over WebTransport or WebSocket
// (transport.js), the control stream, the camera and microphone encoded
// with WebCodecs and cut into datagrams, and every other participant's
// tracks reassembled, decoded, drawn and played (media.js). The page
// (app.js) decides what to do when the connection ends.

import { CLOSE, ControlDecoder, ERROR, audioInfo, encodeControl, parseHeader } from "./wire.js";
import { Packetizer, Reassembler, nowMicros } from "./frames.js";
import { OVERHEAD as E2EE_OVERHEAD } from "./e2ee.js";
import { Playback, audioData, captureAudio, captureVideo, level, loadAudioWorklet } from "./media.js";
import { WebSocketLink, WebTransportLink } from "./transport.js";
import { TRANSPORT_TEXT } from "./words.js";

export const VIDEO = { codec: "vp8", width: 640, height: 360, framerate: 30, bitrate: 600_000, keyframeEvery: 60 };
export const AUDIO = { codec: "opus", sampleRate: 48_000, bitrate: 32_000 };

const SENT_LOG = 4096;
/** Video frames waiting in a decoder before the page drops frames to catch up. */
const MAX_DECODE_QUEUE = 3;
/** Camera frames waiting in the encoder before new ones are skipped. */
const MAX_ENCODE_QUEUE = 3;
const LATENCY_LOG = 4096;
/** Datagrams being encrypted or decrypted at once before more are dropped. */
const CRYPTO_IN_FLIGHT = 256;
/** A track with no datagram for this long is not being rendered (muted, stopped). */
const TRACK_IDLE_MS = 2000;
/** A track whose datagrams fail for this long counts as one we cannot decrypt. */
const FAILING_AFTER_MS = 1000;
/**
 * How long WebTransport tries alone before WebSocket is tried beside it. A
 * working WebTransport is ready within one or two round trips, far below
 * this; a network that blocks UDP often gives no error at all, only
 * silence, so waiting for one could keep the person waiting for good.
 */
const WEBTRANSPORT_HEAD_START_MS = 2000;

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
   * rendered. options: {audio: the page's AudioContext (started by the
   * join click), transport: "webtransport" | "websocket" to use that one
   * only, or null to choose}.
   */
  constructor(answer, media, hooks, stats, e2ee = null, options = {}) {
    this.answer = answer;
    this.media = media;
    this.hooks = hooks;
    this.stats = stats;
    this.e2ee = e2ee;
    this.audio = options.audio ?? null;
    this.transportChoice = options.transport ?? null;
    this.me = null; // our participant id, once the relay has welcomed us
    this.link = null; // the WebTransportLink or WebSocketLink in use
    this.linkWhy = null; // why that one (see openLink)
    this.capture = []; // {stop()} of the camera and microphone capture
    this.encoders = [];
    this.microphoneLevel = 0;
    // The level of the chunk being encoded, RMS 0–1 (the audio headers
    // carry it in -dBov, RFC 6464 style).
    this.chunkLevel = 0;
    // The relay's word: no one takes our video now (`layers` with none).
    this.videoPaused = false;
    this.canPlay = false; // whether remote audio can be played (the worklet loaded)
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
    // The worklet loads while the connection is made and the relay
    // answers (Firefox takes a second or two): remote audio plays through
    // it from the first packet. Without it the call goes on unheard
    // rather than not at all.
    const worklet = this.audio
      ? loadAudioWorklet(this.audio).then(
          () => true,
          (e) => {
            this.stats.errors.push(`audio worklet: ${e}`);
            return false;
          },
        )
      : false;
    const { link, why } = await openLink(this.answer.relay, this.transportChoice, this.stats);
    this.link = link;
    this.linkWhy = why;
    try {
      await this.welcome();
      this.canPlay = await worklet;
    } catch (e) {
      this.stopped = true;
      link.close(CLOSE.NORMAL, "");
      throw e;
    }
    this.controlDone = this.controlLoop();
    this.link.receiveDatagrams((d) => this.onDatagram(d));
    this.publishMedia();
    this.hooks.roster(this.roster);
  }

  /** Sends hello and reads the relay's welcome. */
  async welcome() {
    await this.send({ type: "hello", ticket: this.answer.ticket });
    this.decoder = new ControlDecoder();
    const first = await this.nextMessage();
    if (!first) throw new Ended("lost", "the relay closed the connection");
    if (first.type === "error") throw new Ended("refused", first.message);
    if (first.type !== "welcome") throw new Ended("refused", `unexpected ${first.type}`);
    this.me = first.participant;
    this.roster.set(this.me, this.answer.display_name || "you");
    for (const t of first.tracks) this.trackPublished(t);
  }

  async send(message) {
    // The relay closes a connection whose first message is not hello, and
    // the page may have things to say before then (its end-to-end
    // encryption status, every second): nothing but hello goes out until
    // the relay has welcomed us.
    if (this.me === null && message.type !== "hello") return;
    const frame = encodeControl(message);
    this.sendQueue = this.sendQueue.then(() => this.link.sendControl(frame)).catch(() => {});
    return this.sendQueue;
  }

  async nextMessage() {
    for (;;) {
      const m = this.decoder.next();
      if (m) return m;
      const bytes = await this.link.receiveControl();
      if (!bytes) return null;
      this.decoder.push(bytes);
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
        else this.packetizers[kind] = new Packetizer(m.track, this.link.maxDatagram, this.e2ee ? E2EE_OVERHEAD : 0);
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
      case "layers":
        // Layers no one takes are not sent: with one layer, all or nothing.
        if (m.track === this.published.video) {
          const paused = !(Array.isArray(m.active) && m.active.includes(0));
          if (this.videoPaused && !paused) this.forceKeyframe = true;
          this.videoPaused = paused;
        }
        break;
      case "forwarding":
        // What the relay sends us of a video track, and what limits it.
        this.hooks.forwarding?.(this.tracks.get(m.track)?.participant, m.layer, m.limit);
        break;
      case "active_speaker":
        this.hooks.speaker?.(m.participant ?? null);
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
        this.link.close(CLOSE.NORMAL, "moving");
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
    closeTrack(t);
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
            this.stats.firstRemoteFrameAt ??= performance.now();
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
        // Without the worklet (no AudioContext, or it would not load) audio
        // is decoded and counted, not played.
        t.playback ??= this.canPlay ? new Playback(this.audio) : null;
        t.decoder = new AudioDecoder({
          output: (data) => {
            t.decoded++;
            try {
              t.playback?.push(data);
            } catch {
              t.decodeErrors++;
            } finally {
              data.close();
            }
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
    if (kind === "video" && this.videoPaused) {
      this.stats.sendDropped.paused = (this.stats.sendDropped.paused ?? 0) + 1;
      return;
    }
    // The browser cannot send as fast as we encode (a busy machine, a slow
    // link): drop the frame rather than queue it, and start again from a
    // keyframe.
    if (this.link.congested() || this.encryptionBehind()) {
      this.stats.sendDropped[kind]++;
      if (kind === "video") this.forceKeyframe = true;
      return;
    }
    let datagrams;
    try {
      // Audio headers carry the level (RFC 6464: -dBov, voice below 50).
      const dbov = this.chunkLevel > 0 ? -20 * Math.log10(this.chunkLevel) : 127;
      const info = kind === "audio" ? audioInfo(dbov < 50, dbov) : 0;
      datagrams = p.packetize(data, keyframe, captureMicros, info);
    } catch (e) {
      this.stats.errors.push(String(e));
      return;
    }
    const frameNumber = p.frame - 1;
    if (this.e2ee) this.sendEncrypted(kind, datagrams);
    else for (const d of datagrams) this.sendDatagram(d);
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
        for (const d of sealed) this.sendDatagram(d);
      })
      .catch((e) => this.stats.errors.push(`encryption: ${e}`))
      .finally(() => {
        this.inFlight.encrypt -= datagrams.length;
      });
  }

  /** Hands one datagram to the transport, which may drop it (WebSocket backed up): counted. */
  sendDatagram(d) {
    if (!this.link.sendDatagram(d)) this.stats.datagramsDropped++;
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
      try {
        this.encodeVideo(video);
      } catch (e) {
        this.stats.errors.push(`camera: ${e}`);
      }
    }
    if (audio) {
      await this.publish(2, "audio", AUDIO.codec);
      this.encodeAudio(audio).catch((e) => this.stats.errors.push(`microphone: ${e}`));
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

  /**
   * Encodes the camera: a frame taken from it at each new picture (while
   * published and not muted), stamped with its capture time, which the
   * chunk's timestamp carries to the subscribers.
   */
  encodeVideo(track) {
    let encoder = null;
    let size = null; // "width x height" the encoder is configured for
    let n = 0;
    const capture = captureVideo(track, VIDEO.framerate, (video) => {
      if (this.stopped || !this.packetizers.video || this.muted.video) return;
      // An encoder that failed is closed for good: start a new one.
      if (encoder?.state === "closed") [encoder, size] = [null, null];
      // The encoder is behind (a busy machine): skip this picture.
      if (encoder && encoder.encodeQueueSize >= MAX_ENCODE_QUEUE) return;
      let frame = null;
      try {
        frame = new VideoFrame(video, { timestamp: nowMicros() });
        encoder ??= this.makeVideoEncoder();
        // The camera may change size (another camera, a rotated phone).
        const now = `${frame.displayWidth}x${frame.displayHeight}`;
        if (size !== now) {
          encoder.configure({
            codec: VIDEO.codec,
            width: frame.displayWidth,
            height: frame.displayHeight,
            bitrate: VIDEO.bitrate,
            framerate: VIDEO.framerate,
            latencyMode: "realtime",
          });
          size = now;
          this.forceKeyframe = true;
        }
        const keyFrame = this.forceKeyframe || n % VIDEO.keyframeEvery === 0;
        this.forceKeyframe = false;
        encoder.encode(frame, { keyFrame });
        n = keyFrame ? 1 : n + 1;
      } catch (e) {
        this.noteError(`video capture: ${e}`);
      } finally {
        frame?.close();
      }
    });
    this.capture.push(capture);
  }

  makeVideoEncoder() {
    const encoder = new VideoEncoder({
      output: (chunk) => {
        const data = new Uint8Array(chunk.byteLength);
        chunk.copyTo(data);
        this.sendFrame("video", data, chunk.type === "key", chunk.timestamp);
      },
      error: (e) => this.noteError(`video encoder: ${e}`),
    });
    this.encoders.push(encoder);
    return encoder;
  }

  /**
   * Encodes the microphone: 20 ms chunks from the AudioWorklet, at Opus's
   * 48 kHz, one Opus packet each.
   */
  async encodeAudio(track) {
    if (!this.audio) return;
    let encoder = null;
    let samples = 0; // encoded so far: the chunks' timestamps count them
    const capture = await captureAudio(this.audio, track, AUDIO.sampleRate, (chunk) => {
      // A meter's peak hold: the loudest recent chunk, fading over a second.
      this.chunkLevel = level(chunk);
      this.microphoneLevel = Math.max(this.chunkLevel, this.microphoneLevel * 0.9);
      if (this.stopped || !this.packetizers.audio || this.muted.audio) return;
      let data = null;
      try {
        if (!encoder || encoder.state === "closed") encoder = this.makeAudioEncoder();
        data = audioData(chunk, AUDIO.sampleRate, Math.round((samples * 1e6) / AUDIO.sampleRate));
        samples += chunk.length;
        encoder.encode(data);
      } catch (e) {
        this.noteError(`audio capture: ${e}`);
      } finally {
        data?.close();
      }
    });
    // Stopped while the worklet loaded.
    if (this.stopped) capture.stop();
    else this.capture.push(capture);
  }

  makeAudioEncoder() {
    const encoder = new AudioEncoder({
      output: (packet) => {
        const bytes = new Uint8Array(packet.byteLength);
        packet.copyTo(bytes);
        this.sendFrame("audio", bytes, false, nowMicros());
      },
      error: (e) => this.noteError(`audio encoder: ${e}`),
    });
    encoder.configure({ codec: AUDIO.codec, sampleRate: AUDIO.sampleRate, numberOfChannels: 1, bitrate: AUDIO.bitrate });
    this.encoders.push(encoder);
    return encoder;
  }

  /** Records an error once: a camera that fails, fails at every frame. */
  noteError(text) {
    if (!this.stats.errors.includes(text)) this.stats.errors.push(text);
  }

  /** Stops taking the camera and microphone, and their encoders. */
  stopCapture() {
    this.stopped = true;
    for (const c of this.capture.splice(0)) c.stop();
    for (const e of this.encoders.splice(0)) {
      try {
        e.close();
      } catch {}
    }
  }

  setMuted(kind, muted) {
    this.muted[kind] = muted;
    if (kind === "video" && !muted) this.forceKeyframe = true;
  }

  /** Resolves with why the connection ended. */
  async ended() {
    const info = await this.link.closed;
    // The relay's last control message (kicked, conference_ended,
    // going_away) may still be on its way to the control loop.
    await Promise.race([this.controlDone, new Promise((r) => setTimeout(r, 500))]);
    this.stopCapture();
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
    this.stopCapture();
    try {
      await this.send({ type: "leave" });
    } catch {}
    this.link?.close(CLOSE.NORMAL, "left");
  }

  /** Closes without telling the relay (the relay is gone anyway). */
  drop() {
    this.stopCapture();
    for (const t of this.tracks.values()) closeTrack(t);
    this.link?.close(CLOSE.NORMAL, "");
  }

  /**
   * The audio as heard: the microphone's level and, per participant, what
   * their playback did ({level, peak, bufferedMs, targetMs, played,
   * underruns, dropped}, frames counted at the AudioContext's rate; levels
   * are RMS, 0 for silence; peak the loudest level so far).
   */
  audioStats() {
    const rate = this.audio?.sampleRate ?? AUDIO.sampleRate;
    const peers = {};
    for (const t of this.tracks.values()) {
      if (!t.playback) continue;
      const p = t.playback.stats;
      peers[t.participant] = {
        level: p.level,
        peak: t.playback.peak,
        bufferedMs: Math.round((p.buffered * 1000) / rate),
        targetMs: Math.round((p.target * 1000) / rate),
        played: p.played,
        underruns: p.underruns,
        dropped: p.dropped,
      };
    }
    return { context: this.audio?.state ?? null, sampleRate: this.audio?.sampleRate ?? null, microphone: this.microphoneLevel, peers };
  }

  trackStats() {
    const out = {};
    for (const t of this.tracks.values()) out[t.id] = statOf(t);
    return out;
  }
}

/** Closes a remote track's decoder and playback. */
function closeTrack(t) {
  try {
    t.decoder?.close();
  } catch {}
  t.playback?.close();
  t.playback = null;
}

/**
 * Opens the way to `relay`: WebTransport first where the browser has it,
 * WebSocket when it does not, fails, or is not ready after its head start;
 * the first ready wins and the other is closed. `force` ("webtransport" or
 * "websocket", from the link) allows that one only. Resolves with {link,
 * why}: why is "forced", "chosen" (WebTransport), or for WebSocket
 * "browser" (no WebTransport here), "relay" (the relay offers no
 * WebTransport) or "network" (WebTransport failed or stayed silent).
 */
async function openLink(relay, force, stats) {
  const canWt = typeof WebTransport === "function" && !!relay.webtransport_url && force !== "websocket";
  const canWs = typeof WebSocket === "function" && !!relay.websocket_url && force !== "webtransport";
  if (!canWt && !canWs) throw new Error(TRANSPORT_TEXT.none(force, !!relay.websocket_url));
  let wt = null;
  let wtOpening = null;
  if (canWt) {
    wt = new WebTransportLink(relay);
    wtOpening = wt.open().then(() => wt);
    if (!canWs) return { link: await wtOpening, why: force ? "forced" : "chosen" };
    const headStart = new Promise((resolve) => setTimeout(resolve, WEBTRANSPORT_HEAD_START_MS, "slow"));
    const first = await Promise.race([wtOpening, headStart]).catch((e) => e);
    if (first === wt) return { link: wt, why: "chosen" };
    stats.errors.push(first === "slow" ? "WebTransport not ready after its head start: trying WebSocket beside it" : `WebTransport: ${first}`);
    if (first !== "slow") wtOpening = null;
  }
  const ws = new WebSocketLink(relay);
  const candidates = [ws.open().then(() => ws)];
  if (wtOpening) candidates.push(wtOpening);
  let link;
  try {
    link = await Promise.any(candidates);
  } catch (e) {
    throw new Error(e.errors.map(String).join("; "));
  }
  for (const other of [wt, ws]) if (other && other !== link) other.close(CLOSE.NORMAL, "another transport won");
  let why = "network";
  if (link === wt) why = "chosen";
  else if (force) why = "forced";
  else if (typeof WebTransport !== "function") why = "browser";
  else if (!relay.webtransport_url) why = "relay";
  return { link, why };
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
