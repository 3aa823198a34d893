// HMAC-SHA256 and HKDF (RFC 5869) on WebCrypto, whose own HKDF cannot run
// Expand alone.

import { concat } from "./bytes.js";

const subtle = globalThis.crypto.subtle;
const EMPTY = new Uint8Array(0);

const HMAC = { name: "HMAC", hash: "SHA-256" };
export const HASH_LEN = 32;

/**
 * An HMAC-SHA256 key. WebCrypto refuses an empty key; HMAC pads every key
 * shorter than the 64-byte block with zeros, so an empty key and 32 zero
 * bytes are the same key (RFC 5869's default salt is exactly that).
 */
export function hmacKey(raw) {
  return subtle.importKey("raw", raw.length ? raw : new Uint8Array(HASH_LEN), HMAC, false, ["sign", "verify"]);
}

async function asHmacKey(key) {
  return key instanceof CryptoKey ? key : hmacKey(key);
}

/** HMAC-SHA256(key, data); `key` raw bytes or a key from hmacKey(). */
export async function hmacSha256(key, data) {
  return new Uint8Array(await subtle.sign("HMAC", await asHmacKey(key), data));
}

/** Whether `mac` is HMAC-SHA256(key, data), compared by WebCrypto. */
export async function hmacVerify(key, mac, data) {
  if (mac.length !== HASH_LEN) return false;
  return subtle.verify("HMAC", await asHmacKey(key), mac, data);
}

/** HKDF-Extract(salt, ikm) -> PRK (32 bytes). */
export function hkdfExtract(salt, ikm) {
  return hmacSha256(salt, ikm);
}

/** HKDF-Expand(prk, info, length) -> `length` bytes (at most 255 * 32). */
export async function hkdfExpand(prk, info, length) {
  if (length > 255 * HASH_LEN) throw new Error("HKDF-Expand: too long");
  const key = await asHmacKey(prk);
  const out = new Uint8Array(length);
  let block = EMPTY;
  for (let i = 1, at = 0; at < length; i++) {
    block = await hmacSha256(key, concat(block, info, [i]));
    out.set(block.subarray(0, Math.min(HASH_LEN, length - at)), at);
    at += HASH_LEN;
  }
  return out;
}
