// Audio on the audio thread, loaded by media.js with
// audioWorklet.addModule: "rr-capture" hands the microphone to the page
// in chunks for the Opus encoder, "rr-playback" plays one remote
// participant's decoded audio through a small jitter buffer. No imports:
// a worklet runs apart from the page and its modules.

/** Cuts the microphone into chunks of `processorOptions.chunk` frames (mono). */
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.chunk;
    this.chunk = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    // No channel: the source gives nothing (a track just ended or not yet
    // started). Silence keeps the encoder's clock going, as a silent
    // microphone would.
    const channel = inputs[0]?.[0] ?? new Float32Array(128);
    let at = 0;
    while (at < channel.length) {
      const n = Math.min(channel.length - at, this.size - this.filled);
      this.chunk.set(channel.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === this.size) {
        // Handed over, not copied: a new chunk takes its place.
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

/**
 * Plays the chunks posted to it (Float32Array, mono, at the context's
 * rate). It starts once `target` frames are buffered, so that datagrams
 * arriving unevenly still play evenly; after running dry it outputs
 * silence and waits for `target` again. More than `headroom` above the
 * target, it drops the oldest audio down to the target: late audio is
 * worth less than a short gap. Each time it runs dry the target grows by
 * `step`, up to `maxTarget` (a busy page hands audio over in bursts),
 * unless the audio stayed away for `pause` frames (a microphone muted, a
 * participant gone: not jitter); after `relax` frames without running
 * dry it shrinks by half a step, down to where it began. Every `report`
 * frames it posts what it did, for the page's snapshot.
 */
class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.minTarget = o.target;
    this.target = o.target;
    this.maxTarget = o.maxTarget;
    this.step = o.step;
    this.headroom = o.headroom;
    this.relax = o.relax;
    this.pause = o.pause;
    this.report = o.report;
    this.queue = [];
    this.offset = 0; // frames of queue[0] already played
    this.buffered = 0;
    this.playing = false;
    this.sinceDry = 0;
    this.grown = 0; // what the target grew by when playback last ran dry
    this.stats = { played: 0, underruns: 0, dropped: 0 };
    this.energy = 0;
    this.sinceReport = 0;
    this.port.onmessage = (e) => this.push(e.data);
  }

  push(samples) {
    this.queue.push(samples);
    this.buffered += samples.length;
    if (this.buffered <= this.target + this.headroom) return;
    while (this.buffered > this.target && this.queue.length > 1) {
      const dropped = this.queue.shift().length - this.offset;
      this.offset = 0;
      this.buffered -= dropped;
      this.stats.dropped += dropped;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.buffered >= this.target) {
      this.playing = true;
      // Dry for so long that it was a pause: the target had no cause to grow.
      if (this.sinceDry >= this.pause) this.target -= this.grown;
      this.grown = 0;
    }
    let at = 0;
    while (this.playing && at < out.length) {
      if (this.queue.length === 0) {
        this.playing = false;
        this.stats.underruns++;
        this.grown = Math.min(this.maxTarget, this.target + this.step) - this.target;
        this.target += this.grown;
        this.sinceDry = 0;
        break;
      }
      const head = this.queue[0];
      const n = Math.min(out.length - at, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), at);
      for (let i = at; i < at + n; i++) this.energy += out[i] * out[i];
      at += n;
      this.offset += n;
      this.buffered -= n;
      this.stats.played += n;
      if (this.offset === head.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    // What is not filled stays silent (outputs start zeroed).
    this.sinceDry += out.length;
    if (this.playing && this.sinceDry >= this.relax) {
      this.target = Math.max(this.minTarget, this.target - this.step / 2);
      this.sinceDry = 0;
    }
    this.sinceReport += out.length;
    if (this.sinceReport >= this.report) {
      const level = Math.sqrt(this.energy / this.sinceReport);
      this.port.postMessage({ ...this.stats, buffered: this.buffered, target: this.target, level });
      this.energy = 0;
      this.sinceReport = 0;
    }
    return true;
  }
}

registerProcessor("rr-capture", Capture);
registerProcessor("rr-playback", Playback);
