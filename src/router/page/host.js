// Host controls: moderation through the router's API, and the waiting
// room the host admits from.

import { api, conferencePath } from "./api.js";
import { rotateKeys } from "./keys.js";
import { $, state } from "./state.js";
import { refusalText } from "./words.js";

export async function hostAction(method, path, body) {
  try {
    return (await api(method, `${conferencePath()}${path}`, body, state.answer.manage_token)).json;
  } catch (e) {
    $("host-status").textContent = refusalText(e.code, e.message);
    return null;
  }
}

export async function kick(pid, ban) {
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

export async function report(pid) {
  const reason = prompt("What happened? (sent to the operator)") || "reported from the call page";
  const r = await hostAction("POST", `/participants/${encodeURIComponent(pid)}/report`, { reason: reason.slice(0, 500) });
  if (r) $("host-status").textContent = "Reported to the operator.";
}

let waitingTimer = null;
export async function pollWaiting() {
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
