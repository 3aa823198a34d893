// The call page: join form, waiting room, the call, host controls, and a
// plain-words message for every way a join or a call can end. The router
// serves these files; the API they call is the same origin's /v1.
//
// This file reads the link and wires the page's controls. What the page
// knows is in state.js, its words in words.js, the API client in api.js,
// joining and the call in join.js (the relay connection: call.js), end to
// end encryption as shown in keys.js (the scheme: e2ee.js), and the host's
// controls in host.js.

import { api, conferencePath, joinRouter, Refused } from "./api.js";
import { parseConferenceSecret } from "./e2ee.js";
import { hostAction, report } from "./host.js";
import { applyMute, finishCall, startCall, stopMedia } from "./join.js";
import { e2eeTick, rotateKeys } from "./keys.js";
import { startAudio } from "./media.js";
import { $, e2eeView, state, stats } from "./state.js";
import { BROWSER_TEXT, E2EE_TEXT, ENDED_TEXT, refusalText, show } from "./words.js";

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
  // A test, or someone who knows their network, can ask for one way to
  // the relay: ?transport=websocket or ?transport=webtransport.
  const transport = new URLSearchParams(location.search).get("transport");
  if (transport === "websocket" || transport === "webtransport") state.transport = transport;
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
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
  stats.joinClickedAt ??= performance.now();
  state.conference = $("conference").value.trim();
  state.name = $("display-name").value.trim();
  if (!state.credential?.invite) state.credential = { passcode: $("passcode").value.trim() };
  if (!state.conference || !state.name) {
    return show("refused", "Enter the conference id and your name.");
  }
  // Browsers hide all of it from a page that is not secure.
  if (!window.isSecureContext) return show("refused", BROWSER_TEXT.insecure);
  const missing = missingFeatures(state.transport);
  if (missing.length) return show("refused", BROWSER_TEXT.lacks(missing));
  // Browsers start audio only in answer to a person's gesture: this click.
  state.audio = startAudio(state.audio);
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

/**
 * What this browser lacks to join a call (names words.js explains): the
 * WebCodecs encoders and decoders, the AudioWorklet (microphone and
 * playback), and a way to the relay, the one the link asks for if it does.
 */
function missingFeatures(force) {
  const missing = ["VideoEncoder", "VideoDecoder", "AudioEncoder", "AudioDecoder"].filter((n) => typeof window[n] !== "function");
  if (typeof AudioContext !== "function" || typeof AudioWorkletNode !== "function" || !("audioWorklet" in AudioContext.prototype)) {
    missing.push("AudioWorklet");
  }
  const webTransport = typeof WebTransport === "function";
  const webSocket = typeof WebSocket === "function";
  if (force === "webtransport" && !webTransport) missing.push("WebTransport");
  else if (force === "websocket" && !webSocket) missing.push("WebSocket");
  else if (!webTransport && !webSocket) missing.push("connection");
  return missing;
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
