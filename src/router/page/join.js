// Joining and the call: the join request (and the waiting room), the
// relay's connection, moves to another relay, leaving, and what the page
// shows of the participants.

import { Call } from "./call.js";
import { api, conferencePath, Refused } from "./api.js";
import { kick, pollWaiting, report } from "./host.js";
import { renderE2ee, rotateKeys, sendE2ee, setUpE2ee } from "./keys.js";
import { $, addTrack, e2eeView, state, stats } from "./state.js";
import { ENDED_TEXT, TRANSPORT_TEXT, refusalText, show } from "./words.js";

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
  speaker(pid) {
    for (const tile of document.querySelectorAll(".tile[data-participant]")) {
      tile.classList.toggle("speaking", tile.dataset.participant === pid);
    }
  },
  forwarding(pid, layer, limit) {
    if (!pid) return;
    const tile = document.querySelector(`.tile[data-participant="${CSS.escape(pid)}"]`);
    if (!tile) return;
    // Video paused because our connection carries only audio: say so.
    tile.dataset.paused = layer === null && limit === "network" ? "network" : "";
  },
  removeTile(pid) {
    document.querySelector(`.tile[data-participant="${CSS.escape(pid)}"]`)?.remove();
  },
};

function residencyText(answer) {
  const j = answer.jurisdiction;
  const r = answer.relay;
  const law = j.legal_basis ? ` (${j.legal_basis.split(" (")[0]})` : "";
  const place = [r.city, r.country_name || r.country].filter(Boolean).join(", ");
  return `This call stays in the ${j.name}${law}; your media goes through ${place}.`;
}

export async function startCall(answer) {
  state.answer = answer;
  state.host = answer.role === "host" && !!answer.manage_token;
  stats.relays.push(answer.relay.id);
  show(state.phase === "moving" ? "moving" : "connecting", state.phase === "moving" ? state.message : "Connecting to the relay…");
  $("residency").textContent = residencyText(answer);
  $("host").hidden = !state.host;
  await setUpE2ee(answer);
  const media = answer.role === "viewer" ? null : state.media;
  // Every connection, a move's too, chooses its transport afresh: the
  // new relay, or the network since, may allow what the last did not.
  const call = new Call(answer, media, hooks, stats, state.e2eeOn ? state.e2ee : null, { audio: state.audio, transport: state.transport });
  state.call = call;
  await call.connect();
  stats.transports.push(call.link.kind);
  $("transport").textContent = TRANSPORT_TEXT.connected(call.link.kind, call.linkWhy);
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

export function finishCall(call) {
  for (const t of Object.values(call.trackStats())) addTrack(stats.finished, t);
  call.drop();
  document.querySelectorAll(".tile[data-participant]").forEach((t) => t.remove());
  $("transport").textContent = "";
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

export function stopMedia() {
  state.media?.getTracks().forEach((t) => t.stop());
  // Nothing more to hear; the next join click resumes it.
  state.audio?.suspend().catch(() => {});
}

export function applyMute() {
  const c = state.call;
  if (!c) return;
  c.setMuted("video", $("mute-video").getAttribute("aria-pressed") === "true");
  c.setMuted("audio", $("mute-audio").getAttribute("aria-pressed") === "true");
}
