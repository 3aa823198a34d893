// What the call page knows and shows: its state, the statistics tests and
// curious people read (window.rr.snapshot()), and the element look-up.

export const $ = (id) => document.getElementById(id);

/** What tests and curious people can read: window.rr.snapshot(). */
export const stats = {
  sent: { video: { frames: 0, keyframes: 0, bytes: 0 }, audio: { frames: 0, keyframes: 0, bytes: 0 } },
  sentLog: [],
  sendDropped: { video: 0, audio: 0 },
  datagramsDropped: 0, // media datagrams a backed-up WebSocket did not take
  latency: [],
  errors: [],
  goingAway: [],
  closeCodes: [],
  keyframeRequestsReceived: 0,
  moves: 0,
  relays: [],
  transports: [], // per connection, as relays: "webtransport" | "websocket"
  finished: {}, // per participant, counts from connections that ended
  // performance.now() (ms since the page was opened) of the join click
  // and of the first remote video frame drawn: how long joining takes.
  joinClickedAt: null,
  firstRemoteFrameAt: null,
};

export const state = {
  conference: null,
  credential: null, // {passcode} | {invite}
  name: "",
  answer: null,
  call: null,
  media: null,
  audio: null, // the AudioContext, started by the join click
  transport: null, // "webtransport" | "websocket" when the link's ?transport= asks for one
  phase: "form",
  message: "",
  host: false,
  leaving: false,
  // End to end (docs/e2ee.md). The key from the link (or typed in) lives
  // here only, never in the address bar, the form or storage.
  key: null, // S0, 32 bytes
  keyRejected: false, // the link's k= was not a key
  pendingAnswer: null, // an e2ee join answer waiting for the key to be typed in
  e2ee: null, // the E2ee of this session (kept across relay moves)
  e2eeOn: false, // the join answer said e2ee
  keyIgnored: false, // a key was given for a conference without e2ee
  callStartedAt: 0, // when this session's E2ee was made
  removing: new Map(), // participant id -> name, while the host removes them
  lastLeft: null, // {at, name} of the latest participant_left
  genericNotice: null, // {at, index} of a key-change notice that could not say why
  joinedAt: new Map(), // participant id -> when we saw them arrive
  caughtUpAt: null, // when, as host, we last jumped past the others' epoch
  rememberedEpoch: 0, // the epoch this tab held before a reload (sessionStorage)
  claimNoticed: new Set(), // participants whose claim of an epoch no host made we reported
  takeOver: 0, // the highest such claim, for the host's "new keys for everyone" button
};

/** What the page shows about end-to-end encryption; window.rr.snapshot().e2ee. */
export const e2eeView = {
  badge: false,
  state: 0, // our own status: 0 everything we render decrypts, 1 some track does not
  tracks: [], // Call.e2eeTracks() at the last update
  undecryptable: [], // participants with a track we cannot decrypt
  cannotDecrypt: [], // participants who say (or show) they cannot decrypt
  notices: [], // {at, text}
};

window.rr = {
  state,
  stats,
  snapshot() {
    const tracks = state.call ? state.call.trackStats() : {};
    const peers = structuredClone(stats.finished);
    for (const t of Object.values(tracks)) addTrack(peers, t);
    return {
      phase: state.phase,
      message: state.message,
      participant: state.answer?.participant_id ?? null,
      relay: state.answer?.relay?.id ?? null,
      residency: $("residency").textContent,
      roster: [...($("roster").querySelectorAll("li") ?? [])].map((li) => li.dataset.name),
      sent: stats.sent,
      sentLog: stats.sentLog,
      sendDropped: stats.sendDropped,
      datagramsDropped: stats.datagramsDropped,
      transport: stats.transports.at(-1) ?? null,
      transports: stats.transports,
      joinClickedAt: stats.joinClickedAt,
      firstRemoteFrameAt: stats.firstRemoteFrameAt,
      peers,
      audio: state.call ? state.call.audioStats() : null,
      latency: stats.latency,
      errors: stats.errors,
      goingAway: stats.goingAway,
      closeCodes: stats.closeCodes,
      keyframeRequestsReceived: stats.keyframeRequestsReceived,
      moves: stats.moves,
      relays: stats.relays,
      host: state.host,
      e2ee: e2eeSnapshot(),
    };
  },
};

function e2eeSnapshot() {
  const e = state.e2ee;
  const on = state.e2eeOn && !!e;
  return {
    enabled: on,
    keyIgnored: state.keyIgnored,
    epoch: on ? e.epoch : null,
    safetyCode: on ? e.safetyCode : null,
    encrypted: e?.stats.encrypted ?? 0,
    decrypted: e?.stats.decrypted ?? 0,
    decryptFailures: e?.stats.decryptFailures ?? 0,
    badMessages: e?.stats.badMessages ?? 0,
    badge: on && e2eeView.badge,
    state: e2eeView.state,
    tracks: e2eeView.tracks,
    undecryptable: e2eeView.undecryptable,
    cannotDecrypt: e2eeView.cannotDecrypt,
    notices: e2eeView.notices.map((n) => n.text),
  };
}

export function addTrack(peers, t) {
  const p = (peers[t.participant] ??= {
    video: { frames: 0, keyframes: 0, bytes: 0, decoded: 0, dropped: 0, lost: 0, decrypted: 0, decryptFailures: 0 },
    audio: { frames: 0, keyframes: 0, bytes: 0, decoded: 0, dropped: 0, lost: 0, decrypted: 0, decryptFailures: 0 },
  });
  const k = p[t.kind];
  if (!k) return;
  k.decrypted += t.decrypted ?? 0;
  k.decryptFailures += t.decryptFailures ?? 0;
  if (t.encrypted !== undefined) k.encrypted = t.encrypted;
  k.frames += t.frames;
  k.keyframes += t.keyframes;
  k.bytes += t.bytes;
  k.decoded += t.decoded;
  k.dropped += t.dropped;
  k.lost += t.lost;
  k.codec = t.codec;
}
