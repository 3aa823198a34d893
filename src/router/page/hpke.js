// HPKE (RFC 9180), base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// AES-128-GCM, on WebCrypto: how the host seals each epoch's secret to
// every participant.

import { concat, fromHex, randomBytes, u16, utf8 } from "./bytes.js";
import { hkdfExpand, hkdfExtract } from "./hkdf.js";

const subtle = globalThis.crypto.subtle;
const EMPTY = new Uint8Array(0);

export const KEM_ID = 0x0020; // DHKEM(X25519, HKDF-SHA256)
export const KDF_ID = 0x0001; // HKDF-SHA256
export const AEAD_ID = 0x0001; // AES-128-GCM
const KEM_SUITE = concat(utf8("KEM"), u16(KEM_ID));
const HPKE_SUITE = concat(utf8("HPKE"), u16(KEM_ID), u16(KDF_ID), u16(AEAD_ID));
const HPKE_VERSION = utf8("HPKE-v1");
const MODE_BASE = 0x00;
const HPKE_NK = 16;
const HPKE_NN = 12;
const HPKE_NH = 32;
export const X25519_LEN = 32;
const X25519 = { name: "X25519" };
// A PKCS #8 PrivateKeyInfo for X25519 up to the 32 key bytes (RFC 8410).
const PKCS8_X25519 = fromHex("302e020100300506032b656e04220420");
// X25519's base point, u = 9 (RFC 7748 §4.1), as a raw public key.
const BASE_POINT = concat([9], new Uint8Array(X25519_LEN - 1));

/** LabeledExtract(salt, label, ikm) under a suite id (RFC 9180 §4). */
export function labeledExtract(suiteId, salt, label, ikm) {
  return hkdfExtract(salt, concat(HPKE_VERSION, suiteId, utf8(label), ikm));
}

/** LabeledExpand(prk, label, info, L) under a suite id (RFC 9180 §4). */
export function labeledExpand(suiteId, prk, label, info, length) {
  return hkdfExpand(prk, concat(u16(length), HPKE_VERSION, suiteId, utf8(label), info), length);
}

/** A raw 32-byte X25519 public key as a WebCrypto key. */
function importPublic(raw) {
  return subtle.importKey("raw", raw, X25519, true, []);
}

/**
 * A key pair from raw private key bytes: {privateKey, publicKey (raw
 * bytes)}. The public key is X25519(sk, 9), a DH with the base point.
 * WebCrypto has no call that returns it in every browser: Firefox 140
 * refuses to export a key imported from PKCS #8 as a JWK (OperationError),
 * and Chromium, Firefox and WebKit all want a private JWK to bring its
 * public key `x` along. The private key need not be extractable.
 */
export async function x25519FromPrivate(sk) {
  if (sk.length !== X25519_LEN) throw new Error("X25519 private keys are 32 bytes");
  const privateKey = await subtle.importKey("pkcs8", concat(PKCS8_X25519, sk), X25519, false, ["deriveBits"]);
  return { privateKey, publicKey: await dh(privateKey, BASE_POINT) };
}

/** A fresh key pair whose private key never leaves WebCrypto. */
export async function x25519Generate() {
  const pair = await subtle.generateKey(X25519, false, ["deriveBits"]);
  const publicKey = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey };
}

/** DH(sk, pk); refuses the all-zero output of a small-order point (RFC 9180 §7.1.4). */
export async function dh(privateKey, publicRaw) {
  if (publicRaw.length !== X25519_LEN) throw new Error("X25519 public keys are 32 bytes");
  const bits = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: await importPublic(publicRaw) }, privateKey, 256));
  if (bits.every((b) => b === 0)) throw new Error("X25519: small-order public key");
  return bits;
}

/** DeriveKeyPair(ikm) for X25519 (RFC 9180 §7.1.3): {sk (raw), privateKey, publicKey (raw)}. */
export async function hpkeDeriveKeyPair(ikm) {
  const prk = await labeledExtract(KEM_SUITE, EMPTY, "dkp_prk", ikm);
  const sk = await labeledExpand(KEM_SUITE, prk, "sk", EMPTY, X25519_LEN);
  return { sk, ...(await x25519FromPrivate(sk)) };
}

/** DHKEM's ExtractAndExpand (RFC 9180 §4.1). */
async function extractAndExpand(dhValue, kemContext) {
  const prk = await labeledExtract(KEM_SUITE, EMPTY, "eae_prk", dhValue);
  return labeledExpand(KEM_SUITE, prk, "shared_secret", kemContext, HPKE_NH);
}

/** An HPKE encryption context (RFC 9180 §5.2): a key, a base nonce and a sequence number. */
export class HpkeContext {
  constructor(key, aes, baseNonce, exporterSecret, keyScheduleContext, secret) {
    this.key = key; // raw, kept for test vectors; the AEAD uses `aes`
    this.aes = aes;
    this.baseNonce = baseNonce;
    this.exporterSecret = exporterSecret;
    this.keyScheduleContext = keyScheduleContext;
    this.secret = secret;
    this.seq = 0;
  }

  /** base_nonce XOR the sequence number, right-aligned. */
  nonce(seq) {
    const nonce = Uint8Array.from(this.baseNonce);
    let s = BigInt(seq);
    for (let i = HPKE_NN - 1; i >= 0 && s > 0n; i--) {
      nonce[i] ^= Number(s & 0xffn);
      s >>= 8n;
    }
    return nonce;
  }

  advance() {
    if (this.seq >= Number.MAX_SAFE_INTEGER) throw new Error("HPKE: message limit reached");
    this.seq++;
  }

  /** Seal(aad, pt) -> ct with the next sequence number. */
  async seal(aad, plaintext) {
    const ct = await subtle.encrypt({ name: "AES-GCM", iv: this.nonce(this.seq), additionalData: aad, tagLength: 128 }, this.aes, plaintext);
    this.advance();
    return new Uint8Array(ct);
  }

  /** Open(aad, ct) -> pt, or null if it does not authenticate (the sequence number stays). */
  async open(aad, ciphertext) {
    let pt;
    try {
      pt = await subtle.decrypt({ name: "AES-GCM", iv: this.nonce(this.seq), additionalData: aad, tagLength: 128 }, this.aes, ciphertext);
    } catch {
      return null;
    }
    this.advance();
    return new Uint8Array(pt);
  }

  /** Export(exporter_context, L) (RFC 9180 §5.3). */
  export(exporterContext, length) {
    return labeledExpand(HPKE_SUITE, this.exporterSecret, "sec", exporterContext, length);
  }
}

/** KeySchedule for the base mode (no PSK) (RFC 9180 §5.1). */
async function keySchedule(sharedSecret, info) {
  const pskIdHash = await labeledExtract(HPKE_SUITE, EMPTY, "psk_id_hash", EMPTY);
  const infoHash = await labeledExtract(HPKE_SUITE, EMPTY, "info_hash", info);
  const context = concat([MODE_BASE], pskIdHash, infoHash);
  const secret = await labeledExtract(HPKE_SUITE, sharedSecret, "secret", EMPTY);
  const key = await labeledExpand(HPKE_SUITE, secret, "key", context, HPKE_NK);
  const baseNonce = await labeledExpand(HPKE_SUITE, secret, "base_nonce", context, HPKE_NN);
  const exporterSecret = await labeledExpand(HPKE_SUITE, secret, "exp", context, HPKE_NH);
  const aes = await subtle.importKey("raw", key, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
  return new HpkeContext(key, aes, baseNonce, exporterSecret, context, secret);
}

/**
 * SetupBaseS(pkR, info): {enc, sharedSecret, context}. The ephemeral key
 * is DeriveKeyPair(ikmE); without `ikmE` (everywhere but test vectors)
 * ikmE is 32 fresh random bytes, which RFC 9180 §7.1.3 allows as
 * GenerateKeyPair.
 */
export async function hpkeSetupBaseS(pkR, info, ikmE = randomBytes(X25519_LEN)) {
  const ephemeral = await hpkeDeriveKeyPair(ikmE);
  const enc = ephemeral.publicKey;
  const sharedSecret = await extractAndExpand(await dh(ephemeral.privateKey, pkR), concat(enc, pkR));
  ephemeral.sk.fill(0);
  return { enc, sharedSecret, context: await keySchedule(sharedSecret, info) };
}

/**
 * SetupBaseR(enc, skR, info): {sharedSecret, context}; `recipient` is a
 * key pair {privateKey, publicKey (raw)}.
 */
export async function hpkeSetupBaseR(enc, recipient, info) {
  const sharedSecret = await extractAndExpand(await dh(recipient.privateKey, enc), concat(enc, recipient.publicKey));
  return { sharedSecret, context: await keySchedule(sharedSecret, info) };
}

/** Single-shot SealBase: {enc, ct}. */
export async function hpkeSeal(pkR, info, aad, plaintext, ikmE) {
  const { enc, context } = await hpkeSetupBaseS(pkR, info, ikmE);
  return { enc, ct: await context.seal(aad, plaintext) };
}

/** Single-shot OpenBase: the plaintext, or null on any failure (never throws). */
export async function hpkeOpen(enc, recipient, info, aad, ciphertext) {
  try {
    const { context } = await hpkeSetupBaseR(enc, recipient, info);
    return await context.open(aad, ciphertext);
  } catch {
    return null;
  }
}
