// End to end encryption as the page shows it (docs/e2ee.md): the key from
// the link, the badge, notices of key changes, and the host's new keys.

import { E2ee } from "./e2ee.js";
import { $, e2eeView, state, stats } from "./state.js";
import { E2EE_TEXT } from "./words.js";

/**
 * Prepares end-to-end encryption for a join answer: on an e2ee conference
 * our E2ee (made once per session: a relay move keeps its keys, index and
 * counters); on another, nothing, and a key from the link is dropped.
 */
export async function setUpE2ee(answer) {
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

export function rememberedEpoch() {
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
export function sendE2ee(messages) {
  const call = state.call;
  if (!call || !messages) return;
  for (const m of [].concat(messages)) if (m) call.sendE2ee(m);
}

/** The host's part: a new epoch without `excluded`, sealed to everyone else. */
export async function rotateKeys(excluded, reason, after = 0) {
  try {
    sendE2ee(await state.e2ee.rotate(excluded, reason, after));
  } catch (e) {
    stats.errors.push(`key rotation: ${e}`);
  }
}

export function notice(text) {
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
export async function e2eeTick() {
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
export function renderE2ee() {
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
