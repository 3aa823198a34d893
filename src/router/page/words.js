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
