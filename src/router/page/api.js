// The router's API, same origin's /v1: JSON in and out, refusals as
// Refused, early answers (the router is busy) retried as it says.

import { $, state, stats } from "./state.js";
import { show } from "./words.js";

export class Refused extends Error {
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
export async function api(method, path, body, token) {
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

export function conferencePath() {
  return `/v1/conferences/${encodeURIComponent(state.conference)}`;
}

/** Joins through the router, waiting in the waiting room if there is one. */
export async function joinRouter(body) {
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
