// The call page: join form, waiting room, the call, host controls, and a
// plain-words message for every way a join or a call can end. The router
// serves this file; the API it calls is the same origin's /v1.

import { Call } from "./call.js";

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
    };
  },
};

function addTrack(peers, t) {
  const p = (peers[t.participant] ??= {
    video: { frames: 0, keyframes: 0, bytes: 0, decoded: 0, dropped: 0, lost: 0 },
    audio: { frames: 0, keyframes: 0, bytes: 0, decoded: 0, dropped: 0, lost: 0 },
  });
  const k = p[t.kind];
  if (!k) return;
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
    case "unreachable":
      return "The server cannot be reached. Check your connection and try again.";
    default:
      return message || "The join was refused.";
  }
}

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
  if (phase === "form" || phase === "refused") $("join").hidden = false;
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

async function api(method, path, body, token) {
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
  return { status: r.status, json };
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
  }
}

// ------------------------------------------------------------------ call

const hooks = {
  trackDone(t) {
    addTrack(stats.finished, t);
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
      li.append(label);
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
  const media = answer.role === "viewer" ? null : state.media;
  const call = new Call(answer, media, hooks, stats);
  state.call = call;
  await call.connect();
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
  const r = await hostAction("POST", `/participants/${encodeURIComponent(pid)}/kick`, { ban, reason: ban ? "removed and banned by a host" : "removed by a host" });
  if (r) $("host-status").textContent = ban ? "Removed and banned." : "Removed.";
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
  if (location.hash) history.replaceState(null, "", location.pathname);
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
  $("join-button").disabled = true;
  show("form", "Joining…");
  await getMedia();
  try {
    const answer = await joinRouter({ ...state.credential, display_name: state.name });
    answer.display_name ??= state.name;
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
  show("form", "");
}

init();
