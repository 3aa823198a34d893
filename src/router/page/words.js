// Plain words for every refusal the router can give and every way a call
// can end, and the page's phases as the person sees them.

import { $, state } from "./state.js";

/** Plain words for every refusal the router can give. */
export function refusalText(code, message, retryAfter) {
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

export const E2EE_TEXT = {
  noKey: "This call is end-to-end encrypted and your link has no key. Ask the host for the full link.",
  badKey: "The key in your link is not valid (it is the 43 characters after k= in the full link). Ask the host for the full link, or type the key in.",
  badTyped: "That key is not right: it is the 43 letters, digits, - and _ after k= in the full link.",
  on: "End-to-end encrypted",
  waiting: "Waiting for every participant's media to decrypt under the current keys…",
  failing: "Not all media decrypts: what cannot be decrypted is not shown.",
  transportOnly: "Media in this call is encrypted in transit to the relay only, not end to end: the relay can read it.",
  keyIgnored: "This conference is not end-to-end encrypted: the key in your link is not used, and nothing is encrypted end to end.",
};

export const ENDED_TEXT = {
  kicked: (detail) => `A host removed you from the call${detail && detail !== "kicked" ? `: ${detail}` : "."}`,
  conference_ended: () => "The host ended the conference for everyone.",
  refused: (detail) => `The relay refused the connection (${detail}).`,
  left: () => "You left the call.",
};

/** Which way the call reaches its relay, as the call's status line says it. */
export const TRANSPORT_TEXT = {
  /** kind: "webtransport" | "websocket"; why: as call.js's openLink says. */
  connected(kind, why) {
    if (kind === "webtransport") return why === "forced" ? "Connected over WebTransport (QUIC), as the link asks." : "Connected over WebTransport (QUIC).";
    switch (why) {
      case "forced":
        return "Connected over WebSocket (TCP), as the link asks.";
      case "browser":
        return "Connected over WebSocket (TCP): this browser has no WebTransport.";
      case "relay":
        return "Connected over WebSocket (TCP): this relay offers no WebTransport.";
      default:
        return "Connected over WebSocket (TCP): your network blocks UDP or WebTransport.";
    }
  },
  /** Why neither way can be tried: force is the link's ?transport=, or null. */
  none(force, relayHasWebSocket) {
    if (force === "websocket") return "the link asks for WebSocket, and this relay offers none";
    if (force === "webtransport") return "the link asks for WebTransport, which this browser does not have";
    if (!relayHasWebSocket) return "this browser has no WebTransport, and this relay offers no WebSocket; Firefox, Chrome, Edge and Chromium have WebTransport";
    return "this browser has neither WebTransport nor WebSocket";
  },
};

/** What a browser needs to join a call, each in plain words. */
const FEATURE_TEXT = {
  VideoEncoder: "video encoding (WebCodecs VideoEncoder)",
  VideoDecoder: "video decoding (WebCodecs VideoDecoder)",
  AudioEncoder: "audio encoding (WebCodecs AudioEncoder)",
  AudioDecoder: "audio decoding (WebCodecs AudioDecoder)",
  AudioWorklet: "audio processing (Web Audio AudioWorklet)",
  connection: "a connection to the relay (WebTransport or WebSocket)",
  WebTransport: "WebTransport, which the link asks for (transport=webtransport)",
  WebSocket: "WebSocket, which the link asks for (transport=websocket)",
};

export const BROWSER_TEXT = {
  insecure:
    "This page must be opened over https:// (or from this computer): browsers give the camera, the microphone and what a call needs to secure pages only.",
  /** missing: names of FEATURE_TEXT. */
  lacks(missing) {
    const only = missing.length === 1 ? missing[0] : null;
    if (only === "WebTransport" || only === "WebSocket") {
      return `This browser has no ${only}, which the link asks for (?transport=${only.toLowerCase()}): open the link without it.`;
    }
    return `This browser cannot join calls: it lacks ${missing.map((n) => FEATURE_TEXT[n] ?? n).join(", ")}. Use a current Firefox, Chrome, Edge or Chromium, or GNOME Web.`;
  },
};

export function show(phase, message = "") {
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
