// The camera, the microphone and the loudspeaker on APIs every browser the
// page supports has (Chromium, Firefox, WebKit): camera frames taken from
// a hidden <video> as VideoFrames, the microphone and remote audio through
// an AudioWorklet (audio-worklet.js). call.js encodes, sends, decodes.

/**
 * WebKitGTK 2.50 crashes its page process on the first WebCodecs call
 * unless its media engine was started first; asking a <video> whether it
 * plays VP8 in WebM starts it. Harmless elsewhere, so done once for all,
 * before call.js can make an encoder or decoder.
 */
document.createElement("video").canPlayType('video/webm; codecs="vp8"');

/** Microphone chunks handed to the encoder: 20 ms, one Opus frame. */
const CHUNK_SECONDS = 0.02;
/** Audio buffered before a remote participant is heard: absorbs uneven arrival. */
const PLAYBACK_TARGET_SECONDS = 0.06;
/**
 * How far the target grows, a step each time playback runs dry: a page
 * busy drawing video hands audio over in bursts, and a deeper buffer
 * rides them out. It shrinks again after a quiet while.
 */
const PLAYBACK_MAX_TARGET_SECONDS = 0.16;
const PLAYBACK_STEP_SECONDS = 0.02;
const PLAYBACK_RELAX_SECONDS = 10;
/** Playback dry this long was a pause (a muted microphone), not jitter. */
const PLAYBACK_PAUSE_SECONDS = 0.5;
/** More than this above the target, the oldest buffered audio is dropped down to it. */
const PLAYBACK_HEADROOM_SECONDS = 0.14;
/** How often a playback node reports its level and counts. */
const PLAYBACK_REPORT_SECONDS = 0.25;

/** Beside this file: /static/audio-worklet.js, this origin's, as the CSP asks. */
const WORKLET = new URL("./audio-worklet.js", import.meta.url).href;
const loaded = new WeakMap(); // AudioContext -> its addModule promise

/** Loads audio-worklet.js into `context`, once. */
export function loadAudioWorklet(context) {
  if (!loaded.has(context)) loaded.set(context, context.audioWorklet.addModule(WORKLET));
  return loaded.get(context);
}

/**
 * The page's AudioContext, made (or resumed) in answer to the join click:
 * browsers start audio only after a person's gesture. 48 kHz is Opus's
 * own rate, so nothing is resampled where the browser grants it.
 */
export function startAudio(current) {
  let context = current;
  if (!context || context.state === "closed") {
    try {
      context = new AudioContext({ sampleRate: 48_000, latencyHint: "interactive" });
    } catch {
      context = new AudioContext({ latencyHint: "interactive" });
    }
  }
  context.resume().catch(() => {});
  return context;
}

/**
 * Calls `onFrame(video)` for each new camera frame of `track`, at most
 * `fps` times a second: `video` is an unseen <video> playing the track,
 * from which the caller makes a VideoFrame. Returns {stop()}.
 */
export function captureVideo(track, fps, onFrame) {
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.autoplay = true;
  // Never put in the document: Chromium, Firefox and WebKit all advance a
  // detached <video> and make frames of it, and nothing is composited.
  video.srcObject = new MediaStream([track]);
  video.play().catch(() => {});
  const pacer = new Pacer(video, fps, () => {
    // Until the first frame is decoded there is no picture to take.
    if (video.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA && video.videoWidth > 0) onFrame(video);
  });
  return {
    stop() {
      pacer.stop();
      video.srcObject = null;
    },
  };
}

/**
 * Ticks once per new video frame (requestVideoFrameCallback), or per
 * animation frame where that is missing, at most `fps` times a second.
 * Both stop in a hidden tab, where the camera must go on being sent: there
 * a timer ticks instead (a page playing audio keeps full-rate timers).
 */
class Pacer {
  constructor(video, fps, tick) {
    this.video = video;
    this.interval = 1000 / fps;
    this.tick = tick;
    this.last = -Infinity;
    this.generation = 0; // a tick of an earlier generation is stale
    this.onVisibility = () => this.schedule();
    document.addEventListener("visibilitychange", this.onVisibility);
    this.schedule();
  }

  schedule() {
    const generation = ++this.generation;
    const run = () => {
      if (generation !== this.generation) return;
      const now = performance.now();
      // 2 ms of slack: a 30 fps camera's frames come 33.3 ms apart, give or take.
      if (now - this.last >= this.interval - 2) {
        this.last = now;
        // One picture that fails must not stop the ones after it.
        try {
          this.tick();
        } catch {}
      }
      if (generation === this.generation) this.next(run);
    };
    this.next(run);
  }

  next(run) {
    if (this.generation < 0) return;
    if (document.hidden) setTimeout(run, this.interval);
    else if (this.video.requestVideoFrameCallback) this.video.requestVideoFrameCallback(run);
    else requestAnimationFrame(run);
  }

  stop() {
    this.generation = -1;
    document.removeEventListener("visibilitychange", this.onVisibility);
  }
}

/**
 * Calls `onChunk(samples)` with the microphone of `track` in 20 ms chunks
 * (Float32Array, mono, at `sampleRate`). Returns {stop()}.
 */
export async function captureAudio(context, track, sampleRate, onChunk) {
  const mediaStream = new MediaStream([track]);
  let source;
  let own = null; // a context of our own, closed on stop
  await loadAudioWorklet(context);
  try {
    source = new MediaStreamAudioSourceNode(context, { mediaStream });
  } catch (e) {
    if (e.name !== "NotSupportedError") throw e;
    // Firefox connects a microphone only to a context at the rate of its
    // own audio graph (the sound card's, often 44.1 kHz): capture in one
    // of those, and resample. The join click let this page start audio.
    own = new AudioContext({ latencyHint: "interactive" });
    own.resume().catch(() => {});
    await loadAudioWorklet(own);
    source = new MediaStreamAudioSourceNode(own, { mediaStream });
  }
  const ctx = own ?? context;
  const node = new AudioWorkletNode(ctx, "rr-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: "explicit",
    channelInterpretation: "speakers",
    processorOptions: { chunk: Math.round(ctx.sampleRate * CHUNK_SECONDS) },
  });
  const resampler = ctx.sampleRate === sampleRate ? null : new Resampler(ctx.sampleRate, sampleRate);
  node.port.onmessage = (e) => onChunk(resampler ? resampler.push(e.data) : e.data);
  source.connect(node);
  // The node writes nothing to its output; connected, it is sure to be
  // run by every browser's audio graph.
  node.connect(ctx.destination);
  return {
    stop() {
      node.port.onmessage = null;
      source.disconnect();
      node.disconnect();
      own?.close().catch(() => {});
    },
  };
}

/** An AudioData of one mono chunk, as the AudioEncoder takes it. */
export function audioData(samples, sampleRate, timestamp) {
  return new AudioData({
    format: "f32-planar",
    sampleRate,
    numberOfFrames: samples.length,
    numberOfChannels: 1,
    timestamp,
    data: samples,
  });
}

/** Root mean square of samples: 0 is silence, about 0.7 a full-scale sine. */
export function level(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return samples.length ? Math.sqrt(sum / samples.length) : 0;
}

/**
 * One remote participant's audio: decoded AudioData in, the loudspeaker
 * out, through a jitter buffer on the audio thread. `stats` holds what the
 * node last reported: {played, underruns, dropped, buffered, target (all
 * in frames), level}. The worklet must be loaded (loadAudioWorklet) first.
 */
export class Playback {
  constructor(context) {
    this.context = context;
    const rate = context.sampleRate;
    this.node = new AudioWorkletNode(context, "rr-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: {
        target: Math.round(rate * PLAYBACK_TARGET_SECONDS),
        maxTarget: Math.round(rate * PLAYBACK_MAX_TARGET_SECONDS),
        step: Math.round(rate * PLAYBACK_STEP_SECONDS),
        relax: Math.round(rate * PLAYBACK_RELAX_SECONDS),
        pause: Math.round(rate * PLAYBACK_PAUSE_SECONDS),
        headroom: Math.round(rate * PLAYBACK_HEADROOM_SECONDS),
        report: Math.round(rate * PLAYBACK_REPORT_SECONDS),
      },
    });
    this.resampler = null; // made when decoded audio comes at another rate
    this.stats = { played: 0, underruns: 0, dropped: 0, buffered: 0, target: 0, level: 0 };
    // The loudest level reported so far: whether anything but silence
    // was ever played (the level itself is that of the last report).
    this.peak = 0;
    this.node.port.onmessage = (e) => {
      this.stats = e.data;
      this.peak = Math.max(this.peak, e.data.level);
    };
    this.node.connect(context.destination);
  }

  /** Queues a decoded AudioData (its first channel); does not close it. */
  push(data) {
    let samples = firstChannel(data);
    if (data.sampleRate !== this.context.sampleRate) {
      if (this.resampler?.from !== data.sampleRate) this.resampler = new Resampler(data.sampleRate, this.context.sampleRate);
      samples = this.resampler.push(samples);
    }
    this.node.port.postMessage(samples, [samples.buffer]);
  }

  close() {
    this.node.port.onmessage = null;
    this.node.disconnect();
  }
}

/** The first channel of an AudioData as 32-bit floats (the call is mono). */
function firstChannel(data) {
  const out = new Float32Array(data.numberOfFrames);
  // Planar float, or interleaved float with one channel, is already laid
  // out so; anything else the browser converts.
  const native = data.format === "f32-planar" || (data.format === "f32" && data.numberOfChannels === 1);
  data.copyTo(out, native ? { planeIndex: 0 } : { planeIndex: 0, format: "f32-planar" });
  return out;
}

/**
 * Linear resampling of a stream given in chunks, for audio whose rate the
 * browser would not convert: plain, and good enough for speech. It keeps
 * the last sample and its position across chunks, so chunks join without
 * a click.
 */
export class Resampler {
  constructor(from, to) {
    this.from = from;
    this.step = from / to;
    this.position = 0; // of the next output sample, in input samples from the next chunk's start
    this.previous = 0; // the last sample of the previous chunk (at position -1)
  }

  push(input) {
    const out = new Float32Array(Math.ceil((input.length - this.position) / this.step) + 1);
    let n = 0;
    let x = this.position;
    for (; x < input.length - 1; x += this.step) {
      const j = Math.floor(x);
      const a = j < 0 ? this.previous : input[j];
      out[n++] = a + (input[j + 1] - a) * (x - j);
    }
    this.position = x - input.length;
    this.previous = input[input.length - 1] ?? this.previous;
    return out.slice(0, n);
  }
}
