// The call page: join form, waiting room, the call, host controls, and a
// plain-words message for every way a join or a call can end. The router
// serves this file; the API it calls is the same origin's /v1.

import { Call } from "./call.js";
import { E2ee, parseConferenceSecret } from "./e2ee.js";

const $ = (id) => document.getElementById(id);

/** What tests and curious people can read: window.rr.snapshot(). */
const stats = {
  sent: { video: { frames: 0, keyframes: 0, bytes: 0 }, audio: { frames: 0, keyframes: 0, bytes: 0 } },
  sentLog: [],
  sendDropped: { video: 0, audio: 0 },
  latency: [],
  errors: [],
  goingAway: [],
  closeCodes: [],
  keyframeRequestsReceived: 0,
  moves: 0,
  relays: [],
  finished: {}, // per participant, counts from connections that ended
};

const state = {
  conference: null,
  credential: null, // {passcode} | {invite}
  name: "",
  answer: null,
  call: null,
  media: null,
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
const e2eeView = {
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
      peers,
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

function addTrack(peers, t) {
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

// ------------------------------------------------------------------ words

/** Plain words for every refusal the router can give. */
function refusalText(code, message, retryAfter) {
  const j = state.answer?.jurisdiction?.name;
  switch (code) {
    case "wrong_passcode":
      return "That passcode is not right. Check it and try again.";
    case "passcode_required":
      return "This conference needs a passcode or an invitation.";
    case "too_many_failures_from_address":
    case "too_many_failures_on_conference":
      return `Too many attempts. Try again in ${retryAfter ?? 60} seconds.`;
    case "locked":
      return "The host has locked this conference: nobody new can join.";
    case "ended":
      return "This conference has ended.";
    case "banned":
      return "A host removed you from this conference. You cannot join it again.";
    case "denied":
      return "The host did not let you in.";
    case "bad_invite":
      return "This invitation is not valid: it was used already, has expired or was copied wrongly.";
    case "unknown_conference":
      return "There is no conference with this id. Check the link.";
    case "no_healthy_relay":
    case "no_relay_in_jurisdiction":
      return `No relay inside ${j ?? "the conference's jurisdiction"} can take the call right now, and the call never leaves it. Try again in a moment.`;
    case "outside_jurisdiction":
      return "No relay inside the conference's jurisdiction can take you. The call never leaves its jurisdiction, so you cannot join from here.";
    case "wrong_router":
    case "jurisdiction_not_served":
      return "This server does not serve the conference's jurisdiction. Ask the host for the right link.";
    case "bad_rejoin":
      return "Your place in the call expired. Join again with the link.";
    case "too_many_connections":
      return `The server is busy. Try again in ${retryAfter ?? 1} seconds.`;
    case "unreachable":
      return "The server cannot be reached. Check your connection and try again.";
    default:
      return message || "The join was refused.";
  }
}

const E2EE_TEXT = {
  noKey: "This call is end-to-end encrypted and your link has no key. Ask the host for the full link.",
  badKey: "The key in your link is not valid (it is the 43 characters after k= in the full link). Ask the host for the full link, or type the key in.",
  badTyped: "That key is not right: it is the 43 letters, digits, - and _ after k= in the full link.",
  on: "End-to-end encrypted",
  waiting: "Waiting for every participant's media to decrypt under the current keys…",
  failing: "Not all media decrypts: what cannot be decrypted is not shown.",
  transportOnly: "Media in this call is encrypted in transit to the relay only, not end to end: the relay can read it.",
  keyIgnored: "This conference is not end-to-end encrypted: the key in your link is not used, and nothing is encrypted end to end.",
};

const ENDED_TEXT = {
  kicked: (detail) => `A host removed you from the call${detail && detail !== "kicked" ? `: ${detail}` : "."}`,
  conference_ended: () => "The host ended the conference for everyone.",
  refused: (detail) => `The relay refused the connection (${detail}).`,
  left: () => "You left the call.",
};

function show(phase, message = "") {
  state.phase = phase;
  state.message = message;
  for (const id of ["join", "waiting", "call"]) $(id).hidden = true;
  if (phase === "form" || phase === "refused" || phase === "needs_key") $("join").hidden = false;
  if (phase === "waiting") $("waiting").hidden = false;
  if (phase === "connecting" || phase === "in_call" || phase === "moving") $("call").hidden = false;
  if (phase === "ended") $("call").hidden = false;
  $("message").textContent = message;
  $("message").hidden = !message;
  $("controls").hidden = phase !== "in_call" && phase !== "moving";
  document.body.dataset.phase = phase;
}

// ------------------------------------------------------------------ API

class Refused extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Times a router over its connection caps is asked again, after its Retry-After, before we give up. */
const BUSY_RETRIES = 5;

/** Seconds of a Retry-After header (1 to 10; `fallback` when absent or unreadable). */
function retrySeconds(value, fallback = 1) {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isFinite(n) ? Math.min(Math.max(n, 1), 10) : fallback;
}

/**
 * One API call. A router whose connection caps are full (many participants
 * behind one address, or an attack) answers 503 too_many_connections with
 * Retry-After: we say so and ask again after it, a few times.
 */
async function api(method, path, body, token) {
  for (let tries = 0; ; tries++) {
    try {
      const r = await apiOnce(method, path, body, token);
      if (tries > 0) $("message").hidden = !state.message;
      return r;
    } catch (e) {
      if (!(e instanceof Refused) || e.code !== "too_many_connections" || tries >= BUSY_RETRIES) throw e;
      const secs = retrySeconds(e.retryAfter);
      stats.busyRetries = (stats.busyRetries ?? 0) + 1;
      $("message").textContent = `The server is busy. Trying again in ${secs} s…`;
      $("message").hidden = false;
      await new Promise((resolve) => setTimeout(resolve, secs * 1000));
    }
  }
}

async function apiOnce(method, path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  } catch {
    throw new Refused(0, "unreachable", "unreachable");
  }
  const text = await r.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch {}
  if (!r.ok) {
    const e = json.error ?? {};
    throw new Refused(r.status, e.code ?? `http_${r.status}`, e.message ?? text, r.headers.get("retry-after"));
  }
  return { status: r.status, json, retryAfter: r.headers.get("retry-after") };
}

function conferencePath() {
  return `/v1/conferences/${encodeURIComponent(state.conference)}`;
}

/** Joins through the router, waiting in the waiting room if there is one. */
async function joinRouter(body) {
  const { status, json } = await api("POST", `${conferencePath()}/join`, body);
  if (status !== 202) return json;
  show("waiting", "");
  $("waiting-text").textContent = "Waiting for the host to let you in…";
  for (;;) {
    const r = await api("GET", `${conferencePath()}/waiting/${encodeURIComponent(json.participant_id)}`, null, json.wait_token);
    if (r.json.waiting !== true) return r.json;
    // Answered early (the router is busy): come back when it says.
    if (r.retryAfter) await new Promise((resolve) => setTimeout(resolve, retrySeconds(r.retryAfter) * 1000));
  }
}

// ------------------------------------------------------------------ call

const hooks = {
  trackDone(t) {
    addTrack(stats.finished, t);
  },
  e2ee(from, data, host) {
    const e = state.e2ee;
    if (!e) return;
    e.receive(from, data, host).then(sendE2ee);
  },
  joined(pid) {
    state.joinedAt.set(pid, Date.now());
    state.e2ee?.joined(pid);
  },
  left(pid, name) {
    state.joinedAt.delete(pid);
    const e = state.e2ee;
    if (!e) return;
    state.lastLeft = { at: Date.now(), name };
    // A key change announced a moment ago in general words: now we know why.
    const g = state.genericNotice;
    if (g && Date.now() - g.at < 3000 && e2eeView.notices[g.index]) {
      e2eeView.notices[g.index].text = "Keys changed: someone left";
      state.genericNotice = null;
      renderE2ee();
    }
    // Whoever leaves held the keys: the host makes the next epoch without
    // them (unless removing them made it already).
    const removed = state.removing.has(pid);
    if (!e.forget(pid) && state.host) {
      rotateKeys([pid], removed ? `Keys changed: ${name ?? "someone"} was removed` : "Keys changed: someone left");
      if (removed) state.removing.delete(pid);
    }
  },
  roster(map) {
    const list = $("roster");
    list.textContent = "";
    for (const [pid, name] of map) {
      const li = document.createElement("li");
      li.dataset.name = name;
      li.dataset.participant = pid;
      const label = document.createElement("span");
      label.textContent = pid === state.call?.me ? `${name} (you)` : name;
      const mark = document.createElement("span");
      mark.className = "e2ee-flag";
      li.append(label, mark);
      if (state.host && pid !== state.call?.me) {
        for (const [text, action] of [
          ["Remove", () => kick(pid, false)],
          ["Remove and ban", () => kick(pid, true)],
          ["Report abuse", () => report(pid)],
        ]) {
          const b = document.createElement("button");
          b.textContent = text;
          b.className = "small";
          b.dataset.action = action === undefined ? "" : text.toLowerCase().replaceAll(" ", "-");
          b.addEventListener("click", action);
          li.append(b);
        }
      }
      list.append(li);
    }
    for (const tile of document.querySelectorAll(".tile[data-participant]")) {
      const name = map.get(tile.dataset.participant);
      if (name) tile.querySelector(".name").textContent = name;
    }
    renderE2ee();
  },
  tile(pid, name, note) {
    let tile = document.querySelector(`.tile[data-participant="${CSS.escape(pid)}"]`);
    if (!tile) {
      tile = document.createElement("figure");
      tile.className = "tile";
      tile.dataset.participant = pid;
      const canvas = document.createElement("canvas");
      canvas.width = 640;
      canvas.height = 360;
      const caption = document.createElement("figcaption");
      caption.className = "name";
      caption.textContent = name ?? "participant";
      const extra = document.createElement("span");
      extra.className = "note";
      tile.append(canvas, caption, extra);
      $("tiles").append(tile);
    }
    if (note) tile.querySelector(".note").textContent = `no picture: ${note}`;
    return tile.querySelector("canvas");
  },
  removeTile(pid) {
    document.querySelector(`.tile[data-participant="${CSS.escape(pid)}"]`)?.remove();
    document.querySelector(`audio[data-participant="${CSS.escape(pid)}"]`)?.remove();
  },
  audio(pid, stream) {
    let el = document.querySelector(`audio[data-participant="${CSS.escape(pid)}"]`);
    if (!el) {
      el = document.createElement("audio");
      el.dataset.participant = pid;
      el.autoplay = true;
      $("audio").append(el);
    }
    el.srcObject = stream;
    el.play().catch(() => {});
  },
};

function residencyText(answer) {
  const j = answer.jurisdiction;
  const r = answer.relay;
  const law = j.legal_basis ? ` (${j.legal_basis.split(" (")[0]})` : "";
  const place = [r.city, r.country_name || r.country].filter(Boolean).join(", ");
  return `This call stays in the ${j.name}${law}; your media goes through ${place}.`;
}

async function startCall(answer) {
  state.answer = answer;
  state.host = answer.role === "host" && !!answer.manage_token;
  stats.relays.push(answer.relay.id);
  show(state.phase === "moving" ? "moving" : "connecting", state.phase === "moving" ? state.message : "Connecting to the relay…");
  $("residency").textContent = residencyText(answer);
  $("host").hidden = !state.host;
  await setUpE2ee(answer);
  const media = answer.role === "viewer" ? null : state.media;
  const call = new Call(answer, media, hooks, stats, state.e2eeOn ? state.e2ee : null);
  state.call = call;
  await call.connect();
  if (state.e2eeOn) {
    if (call.me !== state.e2ee.participant) stats.errors.push(`e2ee: the relay calls us ${call.me}, the router ${state.e2ee.participant}`);
    // Everyone learns our key; whoever had not seen it answers with theirs.
    sendE2ee(await state.e2ee.announce());
  }
  renderE2ee();
  show("in_call", "");
  applyMute();
  call.ended().then((why) => onEnded(call, why));
  if (state.host) pollWaiting();
}

function finishCall(call) {
  for (const t of Object.values(call.trackStats())) addTrack(stats.finished, t);
  call.drop();
  document.querySelectorAll(".tile[data-participant]").forEach((t) => t.remove());
  $("audio").textContent = "";
}

async function onEnded(call, why) {
  if (state.call !== call) return;
  finishCall(call);
  state.call = null;
  if (state.leaving) return show("ended", ENDED_TEXT.left());
  if (why.kind === "kicked" || why.kind === "conference_ended" || why.kind === "refused") {
    stopMedia();
    return show("ended", (ENDED_TEXT[why.kind] ?? ENDED_TEXT.refused)(why.detail));
  }
  // The relay went away or the connection failed: rejoin through the
  // router, which places us on another relay inside the jurisdiction.
  const failed = call.answer.relay.id;
  const text =
    why.kind === "going_away"
      ? `The relay in ${call.answer.relay.city ?? call.answer.relay.country} is going away. Moving you to another relay in the ${call.answer.jurisdiction.name}…`
      : "The connection to the relay was lost. Reconnecting…";
  show("moving", text);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !state.leaving) {
    try {
      const answer = await api("POST", `${conferencePath()}/join`, {
        rejoin: state.answer.rejoin_token,
        participant_id: state.answer.participant_id,
        failed_relay: failed,
      });
      const next = answer.json;
      // The router rotated the rejoin token: keep the new one.
      state.answer.rejoin_token = next.rejoin_token;
      next.display_name ??= state.answer.display_name;
      next.manage_token ??= state.answer.manage_token;
      stats.moves++;
      await startCall(next);
      return;
    } catch (e) {
      if (e instanceof Refused && (e.status === 403 || e.status === 410)) {
        stopMedia();
        // Ended while we were in it (its last message did not arrive).
        if (e.code === "ended") return show("ended", "The conference was ended for everyone.");
        return show("ended", refusalText(e.code, e.message));
      }
      await new Promise((r) => setTimeout(r, 700));
    }
  }
  show("ended", "The call could not be resumed. Join again with the link.");
}

function stopMedia() {
  state.media?.getTracks().forEach((t) => t.stop());
}

function applyMute() {
  const c = state.call;
  if (!c) return;
  c.setMuted("video", $("mute-video").getAttribute("aria-pressed") === "true");
  c.setMuted("audio", $("mute-audio").getAttribute("aria-pressed") === "true");
}

// ------------------------------------------------------------------ end to end

/**
 * Prepares end-to-end encryption for a join answer: on an e2ee conference
 * our E2ee (made once per session: a relay move keeps its keys, index and
 * counters); on another, nothing, and a key from the link is dropped.
 */
async function setUpE2ee(answer) {
  state.e2eeOn = answer.e2ee === true;
  if (!state.e2eeOn) {
    if (state.key) state.keyIgnored = true;
    state.key = null;
    return;
  }
  if (!state.key) throw new Error(E2EE_TEXT.noKey);
  if (!state.e2ee || state.e2ee.participant !== answer.participant_id) {
    state.e2ee = await E2ee.create({ secret: state.key, participant: answer.participant_id, host: state.host });
    state.e2ee.onchange = onE2eeChange;
    state.callStartedAt = Date.now();
    state.rememberedEpoch = rememberedEpoch();
  }
  state.e2ee.host = state.host;
}

/** Where this tab keeps the epoch it is at, so that a host whose page reloads knows where it was. */
function epochKey() {
  return `rr-e2ee-epoch:${state.conference}`;
}

function rememberedEpoch() {
  try {
    const n = Number.parseInt(sessionStorage.getItem(epochKey()) ?? "", 10);
    return Number.isFinite(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  }
}

function rememberEpoch(n) {
  try {
    sessionStorage.setItem(epochKey(), String(n));
  } catch {}
}

/** Sends e2ee messages ({to, data}, or {data} for everyone) on the current connection. */
function sendE2ee(messages) {
  const call = state.call;
  if (!call || !messages) return;
  for (const m of [].concat(messages)) if (m) call.sendE2ee(m);
}

/** The host's part: a new epoch without `excluded`, sealed to everyone else. */
async function rotateKeys(excluded, reason, after = 0) {
  try {
    sendE2ee(await state.e2ee.rotate(excluded, reason, after));
  } catch (e) {
    stats.errors.push(`key rotation: ${e}`);
  }
}

function notice(text) {
  e2eeView.notices.push({ at: Date.now(), text });
  if (e2eeView.notices.length > 50) e2eeView.notices.shift();
  renderE2ee();
}

/** Our E2ee changed: a new epoch gets a notice in plain words. */
function onE2eeChange(event) {
  if (event.type !== "epoch") return renderE2ee();
  const now = Date.now();
  const e = state.e2ee;
  rememberEpoch(event.epoch);
  // Others already said they were at this epoch: we are a newcomer handed
  // the keys in force, and nothing changed for anyone else.
  const others = state.call ? [...state.call.roster.keys()].map((pid) => e.peerStatus(pid)?.epoch ?? -1) : [];
  let text;
  state.genericNotice = null;
  if (event.from === e.participant) text = event.reason ?? "Keys changed";
  else if (others.some((n) => n >= event.epoch)) text = `Received the call's current keys (epoch ${event.epoch}).`;
  else if (state.lastLeft && now - state.lastLeft.at < 15_000) text = "Keys changed: someone left";
  else {
    // The participant_left that made the host rotate may still be on its way.
    text = "Keys changed: the host made new keys";
    state.genericNotice = { at: now, index: e2eeView.notices.length };
  }
  notice(text);
  e2eeTick();
}

/**
 * Once a second, and on every key change: how each track decrypts, our
 * status for the others (sent when it changes), the badge and the marks.
 */
async function e2eeTick() {
  const e = state.e2ee;
  const call = state.call;
  if (!e || !call || !state.e2eeOn) return renderE2ee();
  const tracks = call.e2eeTracks();
  const bad = tracks.filter((t) => t.state === "failing" || t.state === "plaintext");
  e2eeView.tracks = tracks;
  e2eeView.state = bad.length ? 1 : 0;
  e2eeView.undecryptable = [...new Set(bad.map((t) => t.participant))];
  // The mark only while every track being rendered decrypts under the
  // current epoch (a track that is settling, or still under the previous
  // epoch, takes it away until it does).
  e2eeView.badge = tracks.every((t) => t.state === "ok");
  const now = Date.now();
  const cannot = [];
  for (const pid of call.roster.keys()) {
    if (pid === call.me) continue;
    const status = e.peerStatus(pid);
    const since = state.joinedAt.get(pid) ?? state.callStartedAt;
    if (status?.state === 1) cannot.push(pid); // says so
    else if (status && status.epoch < e.epoch && now - e.changedAt > 5000) cannot.push(pid); // still on older keys
    else if (!status && e.epoch > 0 && !e.knows(pid) && now - since > 10_000) cannot.push(pid); // never announced a key
  }
  if (e2eeView.state === 1) cannot.push(call.me); // the others see it from our status
  e2eeView.cannotDecrypt = cannot;
  // Epochs move only by what a host decides. A host whose page reloaded
  // starts again at epoch 0 while the others may be further on, and nobody
  // hands epochs to a host: it makes one above where this tab was before
  // the reload, or above what another host says. A participant who is not
  // a host and claims a later epoch moves nothing: anyone with the link can
  // say anything. We say so once per participant, and a host may decide to
  // make new keys for everyone above it (its page may be new on this device).
  const others = [...call.roster.keys()].filter((pid) => pid !== call.me);
  if (state.host) {
    const hostsSay = others.map((pid) => e.peerStatus(pid)).filter((s) => s?.host).map((s) => s.epoch);
    const ahead = Math.max(state.rememberedEpoch, ...hostsSay, 0);
    if (ahead > e.epoch && now - (state.caughtUpAt ?? 0) > 5000) {
      state.caughtUpAt = now;
      await rotateKeys([], "Keys changed: new keys for everyone", ahead);
    }
  }
  for (const pid of others) {
    const s = e.peerStatus(pid);
    if (!s || s.host || s.epoch <= e.epoch || state.claimNoticed.has(pid)) continue;
    state.claimNoticed.add(pid);
    stats.e2eeClaimsIgnored = (stats.e2eeClaimsIgnored ?? 0) + 1;
    const name = call.roster.get(pid) ?? "A participant";
    console.warn(`e2ee: ${pid} claims epoch ${s.epoch}, above ours (${e.epoch}); no host made it here, nothing changed`);
    notice(`${name}'s page says it holds keys of epoch ${s.epoch}, which no host here made. Nothing was changed.`);
    if (state.host) {
      state.takeOver = Math.max(state.takeOver, s.epoch);
      $("e2ee-takeover").hidden = false;
    }
  }
  try {
    sendE2ee(await e.status(e2eeView.state));
  } catch (err) {
    stats.errors.push(`e2ee status: ${err}`);
  }
  renderE2ee();
}

/** Draws the badge, the keys panel, the notices and the roster's and tiles' marks. */
function renderE2ee() {
  const on = state.e2eeOn && !!state.e2ee;
  const inCall = !!state.answer;
  $("e2ee").hidden = !on;
  $("e2ee-badge").hidden = !on;
  $("transport-only").hidden = on || !inCall;
  $("transport-only").textContent = state.keyIgnored ? `${E2EE_TEXT.keyIgnored} ${E2EE_TEXT.transportOnly}` : E2EE_TEXT.transportOnly;
  const undecryptable = new Set(on ? e2eeView.undecryptable : []);
  const cannot = new Set(on ? e2eeView.cannotDecrypt : []);
  const plaintext = new Set(on ? e2eeView.tracks.filter((t) => t.state === "plaintext").map((t) => t.participant) : []);
  for (const li of $("roster").querySelectorAll("li")) {
    const pid = li.dataset.participant;
    let flag = "";
    if (plaintext.has(pid)) flag = "sends media that is not end-to-end encrypted (not shown)";
    else if (undecryptable.has(pid)) flag = "their media cannot be decrypted (not shown)";
    else if (cannot.has(pid)) flag = pid === state.call?.me ? "you cannot decrypt all media" : "cannot decrypt all media";
    li.dataset.e2ee = flag ? (undecryptable.has(pid) ? "undecryptable" : "cannot-decrypt") : "";
    const mark = li.querySelector(".e2ee-flag");
    if (mark) mark.textContent = flag ? ` — ${flag}` : "";
  }
  for (const tile of document.querySelectorAll(".tile[data-participant]")) {
    tile.dataset.e2ee = undecryptable.has(tile.dataset.participant) ? "failing" : "";
  }
  if (!on) return;
  const e = state.e2ee;
  $("e2ee-badge").dataset.ok = String(e2eeView.badge);
  // The mark exists only while it is true (not merely hidden).
  $("e2ee-mark").hidden = !e2eeView.badge;
  $("e2ee-mark").textContent = e2eeView.badge ? "✓" : "";
  $("e2ee-badge-text").textContent = e2eeView.badge ? E2EE_TEXT.on : e2eeView.state ? E2EE_TEXT.failing : E2EE_TEXT.waiting;
  $("e2ee-epoch").textContent = String(e.epoch);
  $("e2ee-code").textContent = e.safetyCode;
  const last = e2eeView.notices.at(-1);
  $("e2ee-notice").hidden = !last;
  $("e2ee-notice").textContent = last ? last.text : "";
}

// ------------------------------------------------------------------ host

async function hostAction(method, path, body) {
  try {
    return (await api(method, `${conferencePath()}${path}`, body, state.answer.manage_token)).json;
  } catch (e) {
    $("host-status").textContent = refusalText(e.code, e.message);
    return null;
  }
}

async function kick(pid, ban) {
  const name = state.call?.roster.get(pid) ?? "someone";
  if (state.e2ee) state.removing.set(pid, name);
  const r = await hostAction("POST", `/participants/${encodeURIComponent(pid)}/kick`, { ban, reason: ban ? "removed and banned by a host" : "removed by a host" });
  if (!r) {
    state.removing.delete(pid);
    return;
  }
  $("host-status").textContent = ban ? "Removed and banned." : "Removed.";
  // New keys without them, unless their participant_left came first and
  // made them already.
  if (state.e2ee && !state.e2ee.excluded.has(pid)) {
    state.removing.delete(pid);
    await rotateKeys([pid], `Keys changed: ${name} was removed`);
  }
}

async function report(pid) {
  const reason = prompt("What happened? (sent to the operator)") || "reported from the call page";
  const r = await hostAction("POST", `/participants/${encodeURIComponent(pid)}/report`, { reason: reason.slice(0, 500) });
  if (r) $("host-status").textContent = "Reported to the operator.";
}

let waitingTimer = null;
async function pollWaiting() {
  clearTimeout(waitingTimer);
  if (!state.host || !state.call) return;
  const r = await hostAction("GET", "/waiting");
  const list = $("waiting-list");
  list.textContent = "";
  for (const w of r?.waiting ?? []) {
    const li = document.createElement("li");
    li.textContent = `${w.display_name} `;
    li.dataset.participant = w.participant_id;
    for (const [text, verb] of [["Admit", "admit"], ["Deny", "deny"]]) {
      const b = document.createElement("button");
      b.textContent = text;
      b.className = "small";
      b.dataset.action = verb;
      b.addEventListener("click", async () => {
        await hostAction("POST", `/waiting/${encodeURIComponent(w.participant_id)}/${verb}`);
        pollWaiting();
      });
      li.append(b);
    }
    list.append(li);
  }
  $("waiting-none").hidden = (r?.waiting ?? []).length > 0;
  waitingTimer = setTimeout(pollWaiting, 2000);
}

// ------------------------------------------------------------------ wiring

function readLink() {
  const m = location.pathname.match(/^\/j\/([^/]+)$/);
  if (m) state.conference = decodeURIComponent(m[1]);
  // A passcode or invitation travels in the fragment, which the browser
  // never sends to a server; take it out of the address bar at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("p")) state.credential = { passcode: fragment.get("p") };
  if (fragment.get("i")) state.credential = { invite: fragment.get("i") };
  if (fragment.get("name")) state.name = fragment.get("name");
  // The end-to-end key likewise: kept in memory only.
  if (fragment.get("k") !== null) {
    state.key = parseConferenceSecret(fragment.get("k"));
    state.keyRejected = !state.key;
  }
  if (location.hash) history.replaceState(null, "", location.pathname);
  $("e2ee-key-row").hidden = !state.keyRejected;
  $("conference").value = state.conference ?? "";
  $("passcode").value = state.credential?.passcode ?? "";
  $("display-name").value = state.name;
  if (state.credential?.invite) {
    $("passcode-row").hidden = true;
    $("invite-note").hidden = false;
  }
}

async function getMedia() {
  if (state.media) return;
  try {
    state.media = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 360, frameRate: 30 },
      audio: { channelCount: 1, echoCancellation: true },
    });
    $("self").srcObject = state.media;
  } catch (e) {
    stats.errors.push(`camera/microphone: ${e}`);
    $("message").textContent = "Your camera and microphone are not available: you can see and hear the others, they cannot see or hear you.";
    $("message").hidden = false;
  }
}

async function onJoin(event) {
  event.preventDefault();
  state.conference = $("conference").value.trim();
  state.name = $("display-name").value.trim();
  if (!state.credential?.invite) state.credential = { passcode: $("passcode").value.trim() };
  if (!state.conference || !state.name) {
    return show("refused", "Enter the conference id and your name.");
  }
  const needed = ["WebTransport", "VideoEncoder", "AudioEncoder", "MediaStreamTrackProcessor", "MediaStreamTrackGenerator"];
  const missing = needed.filter((n) => !(n in window));
  if (missing.length) {
    return show("refused", `This browser cannot join calls: it lacks ${missing.join(", ")}. Use a current Chromium-based browser (Chromium, Chrome, Edge).`);
  }
  // A key typed in (the field shows when the conference needs one).
  const typed = $("e2ee-key").value.trim();
  if (typed) {
    const key = parseConferenceSecret(typed);
    if (!key) return show("needs_key", E2EE_TEXT.badTyped);
    state.key = key;
    state.keyRejected = false;
    $("e2ee-key").value = "";
  }
  if (state.pendingAnswer && state.pendingAnswer.conference !== state.conference) state.pendingAnswer = null;
  $("join-button").disabled = true;
  show("form", "Joining…");
  await getMedia();
  try {
    let answer;
    const pending = state.pendingAnswer;
    if (pending && state.key) {
      // Admitted already, before the key was typed in: come back with the
      // rejoin token (an invitation may be single-use, the waiting room
      // was passed).
      state.pendingAnswer = null;
      answer = (await api("POST", `${conferencePath()}/join`, { rejoin: pending.rejoin_token, participant_id: pending.participant_id })).json;
      answer.display_name ??= pending.display_name;
      answer.manage_token ??= pending.manage_token;
    } else {
      // A fresh join: a new session, new keys of our own.
      state.pendingAnswer = null;
      state.e2ee = null;
      state.keyIgnored = false;
      e2eeView.notices = [];
      answer = await joinRouter({ ...state.credential, display_name: state.name });
      answer.display_name ??= state.name;
    }
    if (answer.e2ee === true && !state.key) {
      // Never join the media of an end-to-end encrypted call without its key.
      state.pendingAnswer = { ...answer, conference: state.conference };
      $("e2ee-key-row").hidden = false;
      return show("needs_key", state.keyRejected ? E2EE_TEXT.badKey : E2EE_TEXT.noKey);
    }
    await startCall(answer);
  } catch (e) {
    if (e instanceof Refused) show("refused", refusalText(e.code, e.message, e.retryAfter));
    else show("refused", `Could not connect to the relay: ${e.message ?? e}`);
  } finally {
    $("join-button").disabled = false;
  }
}

function toggle(button) {
  const pressed = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(pressed));
  button.textContent = button.dataset[pressed ? "on" : "off"];
  applyMute();
}

function init() {
  readLink();
  $("join-form").addEventListener("submit", onJoin);
  $("mute-video").addEventListener("click", (e) => toggle(e.currentTarget));
  $("mute-audio").addEventListener("click", (e) => toggle(e.currentTarget));
  $("leave").addEventListener("click", async () => {
    state.leaving = true;
    const call = state.call;
    await call?.leave();
    if (call) finishCall(call);
    state.call = null;
    stopMedia();
    show("ended", ENDED_TEXT.left());
  });
  // The host's decision to make keys above a claim it was told of.
  $("e2ee-takeover-button").addEventListener("click", async () => {
    $("e2ee-takeover").hidden = true;
    if (state.host && state.e2ee) await rotateKeys([], "Keys changed: new keys for everyone", state.takeOver);
  });
  $("lock").addEventListener("click", async () => {
    const r = await hostAction("POST", "/lock");
    if (r) $("host-status").textContent = "Locked: nobody new can join.";
  });
  $("unlock").addEventListener("click", async () => {
    const r = await hostAction("POST", "/unlock");
    if (r) $("host-status").textContent = "Unlocked.";
  });
  $("end").addEventListener("click", async () => {
    if (!confirm("End the conference for everyone?")) return;
    await hostAction("POST", "/end");
  });
  $("residency-report").addEventListener("click", async () => {
    const r = await hostAction("GET", "/residency");
    if (!r) return;
    $("report").textContent = JSON.stringify(r, null, 2);
    $("report").hidden = false;
  });
  setInterval(e2eeTick, 1000);
  show("form", "");
}

init();
