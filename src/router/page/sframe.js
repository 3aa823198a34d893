// SFrame (RFC 9605), cipher suite AES_128_GCM_SHA256_128: each media
// datagram encrypted on its own.

import { concat, u16, utf8 } from "./bytes.js";
import { hkdfExpand, hkdfExtract, hmacKey } from "./hkdf.js";

const subtle = globalThis.crypto.subtle;
const EMPTY = new Uint8Array(0);

/** AES_128_GCM_SHA256_128 */
export const SFRAME_SUITE = 0x0004;
export const SFRAME_NK = 16;
const SFRAME_NN = 12;
export const SFRAME_NT = 16;
const MAX_U64 = (1n << 64n) - 1n;

/** Bytes needed for an unsigned value (1 to 8). */
function minimalLength(value) {
  let n = 1;
  while (n < 8 && value >> BigInt(8 * n) !== 0n) n++;
  return n;
}

function writeBig(out, at, value, length) {
  for (let i = length - 1; i >= 0; i--) {
    out[at + i] = Number(value & 0xffn);
    value >>= 8n;
  }
}

function readBig(bytes, at, length) {
  let value = 0n;
  for (let i = 0; i < length; i++) value = (value << 8n) | BigInt(bytes[at + i]);
  return value;
}

/**
 * The SFrame header (RFC 9605 §4.3) for a key id and counter (numbers or
 * BigInts below 2^64): a config byte |X|K(3)|Y|C(3)| where a value below
 * 8 sits in K (or C) itself and a larger one follows in K+1 (C+1) bytes,
 * big-endian and as short as it can be.
 */
export function encodeSframeHeader(kid, ctr) {
  kid = BigInt(kid);
  ctr = BigInt(ctr);
  if (kid < 0n || kid > MAX_U64 || ctr < 0n || ctr > MAX_U64) throw new RangeError("KID and CTR are 64-bit");
  const kidLength = kid < 8n ? 0 : minimalLength(kid);
  const ctrLength = ctr < 8n ? 0 : minimalLength(ctr);
  const out = new Uint8Array(1 + kidLength + ctrLength);
  const k = kidLength ? 0x80 | ((kidLength - 1) << 4) : Number(kid) << 4;
  const c = ctrLength ? 0x08 | (ctrLength - 1) : Number(ctr);
  out[0] = k | c;
  writeBig(out, 1, kid, kidLength);
  writeBig(out, 1 + kidLength, ctr, ctrLength);
  return out;
}

/** {kid, ctr (BigInts), length (bytes)} from the start of `bytes`, or null if it is cut short. */
export function parseSframeHeader(bytes) {
  if (!bytes || bytes.length < 1) return null;
  const config = bytes[0];
  const kidLength = config & 0x80 ? ((config >> 4) & 0x07) + 1 : 0;
  const ctrLength = config & 0x08 ? (config & 0x07) + 1 : 0;
  const length = 1 + kidLength + ctrLength;
  if (bytes.length < length) return null;
  const kid = kidLength ? readBig(bytes, 1, kidLength) : BigInt((config >> 4) & 0x07);
  const ctr = ctrLength ? readBig(bytes, 1 + kidLength, ctrLength) : BigInt(config & 0x07);
  return { kid, ctr, length };
}

/** The 8-byte big-endian KID as it sits in the key derivation labels. */
function kid64(kid) {
  const out = new Uint8Array(8);
  writeBig(out, 0, BigInt(kid), 8);
  return out;
}

/**
 * RFC 9605 §4.4.2: the raw key material of one KID under a base key:
 * {secret, key (16 bytes), salt (12 bytes)}.
 */
export async function deriveSframeKeyMaterial(baseKey, kid) {
  const secret = await hkdfExtract(EMPTY, baseKey);
  const prk = await hmacKey(secret);
  const suite = u16(SFRAME_SUITE);
  const key = await hkdfExpand(prk, concat(utf8("SFrame 1.0 Secret key "), kid64(kid), suite), SFRAME_NK);
  const salt = await hkdfExpand(prk, concat(utf8("SFrame 1.0 Secret salt "), kid64(kid), suite), SFRAME_NN);
  return { secret, key, salt };
}

/**
 * A key ready for sframeEncrypt/sframeDecrypt: {kid, aes (a WebCrypto
 * AES-GCM key that cannot be read back), salt}.
 */
export async function deriveSframeKey(baseKey, kid) {
  const m = await deriveSframeKeyMaterial(baseKey, kid);
  const aes = await subtle.importKey("raw", m.key, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
  m.key.fill(0);
  return { kid: BigInt(kid), aes, salt: m.salt };
}

/** The AES-GCM nonce of a counter: the salt XOR the counter, right-aligned. */
export function sframeNonce(salt, ctr) {
  const nonce = Uint8Array.from(salt);
  const c = new Uint8Array(8);
  writeBig(c, 0, BigInt(ctr), 8);
  for (let i = 0; i < 8; i++) nonce[SFRAME_NN - 8 + i] ^= c[i];
  return nonce;
}

/**
 * SFrame encryption (RFC 9605 §4.4.3): returns header || ciphertext || tag,
 * the tag covering header || metadata as well.
 */
export async function sframeEncrypt(key, kid, ctr, plaintext, metadata = EMPTY) {
  const header = encodeSframeHeader(kid, ctr);
  const sealed = await subtle.encrypt(
    { name: "AES-GCM", iv: sframeNonce(key.salt, ctr), additionalData: concat(header, metadata), tagLength: 128 },
    key.aes,
    plaintext,
  );
  return concat(header, new Uint8Array(sealed));
}

/**
 * SFrame decryption (RFC 9605 §4.4.4) of header || ciphertext || tag:
 * {kid, ctr, plaintext}, or null if it is malformed, for another KID than
 * the key's, or does not authenticate. Never throws on what it is given.
 */
export async function sframeDecrypt(key, data, metadata = EMPTY) {
  const header = parseSframeHeader(data);
  if (!header || data.length < header.length + SFRAME_NT) return null;
  if (key.kid !== undefined && header.kid !== key.kid) return null;
  try {
    const plain = await subtle.decrypt(
      {
        name: "AES-GCM",
        iv: sframeNonce(key.salt, header.ctr),
        additionalData: concat(data.subarray(0, header.length), metadata),
        tagLength: 128,
      },
      key.aes,
      data.subarray(header.length),
    );
    return { kid: header.kid, ctr: header.ctr, plaintext: new Uint8Array(plain) };
  } catch {
    return null;
  }
}
