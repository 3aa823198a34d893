// Bytes for the page's end-to-end encryption: UTF-8, concatenation,
// comparison, hex and base64url, randomness.

const encoder = new TextEncoder();

/** The UTF-8 bytes of a string. */
export function utf8(text) {
  return encoder.encode(text);
}

/** One Uint8Array made of all the arguments (Uint8Arrays or byte arrays). */
export function concat(...parts) {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A u16 in two big-endian bytes. */
export function u16(value) {
  return new Uint8Array([(value >>> 8) & 0xff, value & 0xff]);
}

/** A u32 in four big-endian bytes. */
export function u32(value) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value >>> 0);
  return out;
}

/** Whether two byte arrays hold the same bytes (not constant-time: public data only). */
export function equalBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Lower-case hex of some bytes. */
export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** Bytes from hex; throws on anything that is not an even run of hex digits. */
export function fromHex(hex) {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) throw new Error("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

/** `n` random bytes from the browser's cryptographic generator. */
export function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

/** base64url without padding (RFC 4648 §5). */
export function toBase64url(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * Bytes from base64url without padding, or null if `text` is not exactly
 * that (other characters, padding, an impossible length, or stray bits in
 * the last character: only the one canonical spelling of some bytes is
 * accepted).
 */
export function fromBase64url(text) {
  if (typeof text !== "string" || /[^A-Za-z0-9_-]/.test(text) || text.length % 4 === 1) return null;
  let binary;
  try {
    binary = atob(text.replaceAll("-", "+").replaceAll("_", "/"));
  } catch {
    return null;
  }
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return toBase64url(out) === text ? out : null;
}

/** Compares two strings by their UTF-8 bytes (as the native client does). */
export function compareIds(a, b) {
  const x = utf8(a);
  const y = utf8(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}
