// End-to-end encryption of the call's media, as docs/e2ee.md specifies it:
// every media datagram is encrypted on its own with SFrame (RFC 9605,
// cipher suite AES_128_GCM_SHA256_128) under keys derived from an epoch
// secret; epoch 0's secret is the conference secret S0 from the link, and
// the host hands each later epoch's secret to every remaining participant
// sealed with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256, AES-128-GCM). Participants exchange their public keys and
// epoch secrets in small authenticated messages the relay forwards unread.
//
// WebCrypto only: HMAC-SHA256 (HKDF is built on it, because WebCrypto's
// HKDF cannot run Expand alone), AES-GCM and X25519. Nothing here knows
// about the page; the page (call.js, app.js) moves the bytes.

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

// ------------------------------------------------------------------ bytes

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
function u16(value) {
  return new Uint8Array([(value >>> 8) & 0xff, value & 0xff]);
}

/** A u32 in four big-endian bytes. */
function u32(value) {
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

// ------------------------------------------------------------------ HMAC and HKDF (RFC 5869)

const HMAC = { name: "HMAC", hash: "SHA-256" };
const HASH_LEN = 32;

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

// ------------------------------------------------------------------ SFrame (RFC 9605)

/** AES_128_GCM_SHA256_128 */
export const SFRAME_SUITE = 0x0004;
const SFRAME_NK = 16;
const SFRAME_NN = 12;
const SFRAME_NT = 16;
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

// ------------------------------------------------------------------ HPKE (RFC 9180)

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
const X25519_LEN = 32;
const X25519 = { name: "X25519" };
// A PKCS #8 PrivateKeyInfo for X25519 up to the 32 key bytes (RFC 8410).
const PKCS8_X25519 = fromHex("302e020100300506032b656e04220420");

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
 * bytes)}. WebCrypto computes the public key when the private one is
 * exported as a JWK, which needs it extractable; it is kept only as long
 * as the pair (an ephemeral key, or a test's).
 */
export async function x25519FromPrivate(sk) {
  if (sk.length !== X25519_LEN) throw new Error("X25519 private keys are 32 bytes");
  const privateKey = await subtle.importKey("pkcs8", concat(PKCS8_X25519, sk), X25519, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", privateKey);
  const publicKey = fromBase64url(jwk.x);
  if (!publicKey || publicKey.length !== X25519_LEN) throw new Error("X25519: no public key");
  return { privateKey, publicKey };
}

/** A fresh key pair whose private key never leaves WebCrypto. */
export async function x25519Generate() {
  const pair = await subtle.generateKey(X25519, false, ["deriveBits"]);
  const publicKey = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey };
}

/** DH(sk, pk); refuses the all-zero output of a small-order point (RFC 9180 §7.1.4). */
async function dh(privateKey, publicRaw) {
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

// ------------------------------------------------------------------ this project's scheme (docs/e2ee.md)

/** Bytes an encrypted datagram may grow by: a header with a 5-byte KID and an 8-byte CTR, and the tag. */
export const OVERHEAD = 1 + 7 + 8 + SFRAME_NT;

/** Highest epoch taken or made (as the native side: far from 2^32). */
export const MAX_EPOCH = 0x7fffffff;

/** Least time between two epoch messages the host seals to one member in answer to its announces (ms). */
export const RESEAL_MS = 1000;

/** Largest jump above our epoch a host's catch-up makes from what others say. */
const CATCH_UP_MAX = 1000;
/** Epoch keys kept after a change, for datagrams in flight. */
export const PREVIOUS_EPOCH_MS = 10_000;
/** Track slots per participant (the KID's context bits). */
export const CONTEXTS = 8;
export const MSG_ANNOUNCE = 0x01;
export const MSG_EPOCH = 0x02;
export const MSG_STATUS = 0x03;
export const STATE_OK = 0;
export const STATE_SOME_FAIL = 1;
const WIRE_HEADER = 9;
const SECRET_LEN = 32;
const EPOCH_LABEL = utf8("residency-relay e2ee 1 epoch");
const ANNOUNCE_LEN = 1 + X25519_LEN + HASH_LEN;
const EPOCH_LEN = 1 + 4 + X25519_LEN + SECRET_LEN + 16 + HASH_LEN;
const STATUS_LEN = 1 + 4 + 1 + HASH_LEN;
/** KIDs whose keys one epoch keeps derived (more are derived again when needed). */
const KEY_CACHE = 256;

/** SFrame base key of an epoch: Expand(epoch_secret, "SFrame 1.0 Base Key", 16). */
export function epochBaseKey(epochSecret) {
  return hkdfExpand(epochSecret, utf8("SFrame 1.0 Base Key"), SFRAME_NK);
}

/** Authentication key A: Expand(S0, "residency-relay e2ee 1 auth", 32). */
export function authKey(s0) {
  return hkdfExpand(s0, utf8("residency-relay e2ee 1 auth"), 32);
}

/**
 * The safety code of an epoch: the first 5 bytes of Expand(epoch_secret,
 * "residency-relay e2ee 1 safety code", 8), big-endian, modulo 10^12, in
 * three groups of four digits ("1234 5678 9012").
 */
export async function safetyCode(epochSecret) {
  const v = await hkdfExpand(epochSecret, utf8("residency-relay e2ee 1 safety code"), 8);
  let n = 0;
  for (let i = 0; i < 5; i++) n = n * 256 + v[i]; // below 2^40: exact in a double
  const digits = String(n % 1e12).padStart(12, "0");
  return `${digits.slice(0, 4)} ${digits.slice(4, 8)} ${digits.slice(8)}`;
}

/** KID = (context << 52) | (index << 4) | (epoch mod 16), as a BigInt (it needs 55 bits; index has 48). */
export function makeKid(context, index, epoch) {
  if (!(context >= 0 && context < CONTEXTS)) throw new RangeError("context is 0 to 7");
  if (!(Number.isInteger(index) && index >= 0 && index < 2 ** 48)) throw new RangeError("the index has 48 bits");
  return (BigInt(context) << 52n) | (BigInt(index) << 4n) | BigInt(epoch % 16);
}

/** {context, index, epochBits} of a KID, or null if it is not of this scheme's shape. */
export function splitKid(kid) {
  kid = BigInt(kid);
  if (kid < 0n || kid >> 55n !== 0n) return null;
  return { context: Number(kid >> 52n), index: Number((kid >> 4n) & 0xffffffffffffn), epochBits: Number(kid & 0xfn) };
}

/** The additional data and info of a sealed epoch secret. */
function epochInfo(epoch, recipientId) {
  return concat(EPOCH_LABEL, u32(epoch), utf8(recipientId));
}

/** HPKE-seals an epoch secret to a recipient's announced key: {enc, ciphertext}. */
export async function sealEpochSecret(publicKey, epoch, recipientId, secret, ikmE) {
  const { enc, ct } = await hpkeSeal(publicKey, epochInfo(epoch, recipientId), EPOCH_LABEL, secret, ikmE);
  return { enc, ciphertext: ct };
}

/** Opens a sealed epoch secret with our key pair: the 32-byte secret, or null. */
export async function openEpochSecret(keyPair, epoch, recipientId, enc, ciphertext) {
  const secret = await hpkeOpen(enc, keyPair, epochInfo(epoch, recipientId), EPOCH_LABEL, ciphertext);
  return secret && secret.length === SECRET_LEN ? secret : null;
}

/** announce: 0x01 || public key || HMAC(A, 0x01 || public key || sender id). */
export async function buildAnnounce(a, publicKey, senderId) {
  const body = concat([MSG_ANNOUNCE], publicKey);
  return concat(body, await hmacSha256(a, concat(body, utf8(senderId))));
}

/** {publicKey} of an announce from `senderId`, or null if it is not one or its mac is wrong. */
export async function verifyAnnounce(a, bytes, senderId) {
  if (bytes.length !== ANNOUNCE_LEN || bytes[0] !== MSG_ANNOUNCE) return null;
  const body = bytes.subarray(0, 1 + X25519_LEN);
  if (!(await hmacVerify(a, bytes.subarray(body.length), concat(body, utf8(senderId))))) return null;
  return { publicKey: bytes.slice(1, 1 + X25519_LEN) };
}

/** epoch: 0x02 || epoch || enc || ciphertext || HMAC(A, 0x02 || epoch || enc || ciphertext || recipient id). */
export async function buildEpoch(a, epoch, enc, ciphertext, recipientId) {
  const body = concat([MSG_EPOCH], u32(epoch), enc, ciphertext);
  if (body.length !== EPOCH_LEN - HASH_LEN) throw new Error("epoch message: wrong lengths");
  return concat(body, await hmacSha256(a, concat(body, utf8(recipientId))));
}

/** {epoch, enc, ciphertext} of an epoch message for `recipientId`, or null. */
export async function verifyEpoch(a, bytes, recipientId) {
  if (bytes.length !== EPOCH_LEN || bytes[0] !== MSG_EPOCH) return null;
  const body = bytes.subarray(0, EPOCH_LEN - HASH_LEN);
  if (!(await hmacVerify(a, bytes.subarray(body.length), concat(body, utf8(recipientId))))) return null;
  return {
    epoch: new DataView(bytes.buffer, bytes.byteOffset + 1, 4).getUint32(0),
    enc: bytes.slice(5, 5 + X25519_LEN),
    ciphertext: bytes.slice(5 + X25519_LEN, body.length),
  };
}

/** status: 0x03 || epoch || state || HMAC(A, 0x03 || epoch || state || sender id). */
export async function buildStatus(a, epoch, state, senderId) {
  const body = concat([MSG_STATUS], u32(epoch), [state]);
  return concat(body, await hmacSha256(a, concat(body, utf8(senderId))));
}

/** {epoch, state} of a status from `senderId`, or null (a state other than 0 or 1 is noise). */
export async function verifyStatus(a, bytes, senderId) {
  if (bytes.length !== STATUS_LEN || bytes[0] !== MSG_STATUS || bytes[5] > STATE_SOME_FAIL) return null;
  const body = bytes.subarray(0, 6);
  if (!(await hmacVerify(a, bytes.subarray(6), concat(body, utf8(senderId))))) return null;
  return { epoch: new DataView(bytes.buffer, bytes.byteOffset + 1, 4).getUint32(0), state: bytes[5] };
}

/** A new conference secret S0 as a link carries it (43 base64url characters). */
export function newConferenceSecret() {
  return toBase64url(randomBytes(SECRET_LEN));
}

/** S0 from a link's `k=` value (or a whole link holding one), or null if it is not 32 bytes in base64url. */
export function parseConferenceSecret(text) {
  if (typeof text !== "string") return null;
  text = text.trim();
  const inLink = text.match(/[#&]k=([A-Za-z0-9_-]+)/);
  if (inLink) text = inLink[1];
  if (text.length !== 43) return null;
  const bytes = fromBase64url(text);
  return bytes && bytes.length === SECRET_LEN ? bytes : null;
}

/** The keys of one epoch as a participant holds them. */
class Epoch {
  constructor(n, secret, baseKey, code, from) {
    this.n = n;
    this.secret = secret;
    this.baseKey = baseKey;
    this.code = code;
    this.from = from; // who sent its secret (null: epoch 0, from the link; our id: we made it)
    this.keys = new Map(); // KID -> key, kept once it authenticated a datagram
    this.deriving = new Map(); // KID -> Promise of a key being derived
  }

  static async make(n, secret, from) {
    return new Epoch(n, secret, await epochBaseKey(secret), await safetyCode(secret), from);
  }

  /**
   * The decryption key of a KID: the kept one, or one derived now (shared
   * by the datagrams that wait for it). Only a key that decrypted something
   * is kept, and no more than KEY_CACHE of them: made-up KIDs cost a
   * derivation each, never memory.
   */
  key(kid) {
    const kept = this.keys.get(kid);
    if (kept) return kept;
    let p = this.deriving.get(kid);
    if (!p) {
      p = deriveSframeKey(this.baseKey, kid);
      this.deriving.set(kid, p);
      const done = () => this.deriving.delete(kid);
      p.then(done, done);
    }
    return p;
  }

  /** Keeps a key that decrypted a datagram. */
  keep(kid, key) {
    if (this.keys.has(kid)) return;
    if (this.keys.size >= KEY_CACHE) this.keys.clear();
    this.keys.set(kid, key);
  }
}

/**
 * One participant's end-to-end encryption: the conference secret S0, our
 * X25519 key pair and random 48-bit index, the current epoch (and the
 * previous one for 10 s), the peers' announced keys and statuses, and the
 * send state of each of our tracks.
 *
 *   const e = await E2ee.create({ secret: s0, participant: myId, host });
 *   send(await e.announce());                       // {data} for everyone
 *   for (const m of await e.receive(from, data)) send(m);   // {to?, data}
 *   for (const m of await e.rotate([leftId])) send(m);      // host only
 *   await e.encryptDatagram(datagram, context) / await e.decryptDatagram(datagram)
 *
 * Messages to send are {to, data} (to one participant) or {data} (to
 * everyone): exactly the fields of an `e2ee` control message.
 * `onchange(event)` is called with {type: "epoch", epoch, from, previous, reason},
 * {type: "peer", participant} or {type: "status", participant}.
 */
export class E2ee {
  /** Use E2ee.create(), which derives the keys first. */
  constructor({ participant, host, now, index, auth, keyPair, epoch0 }) {
    this.participant = participant;
    this.host = host;
    this.now = now;
    this.index = index;
    this.auth = auth; // A, as an HMAC key
    this.keyPair = keyPair; // {privateKey (never leaves WebCrypto), publicKey (raw)}
    this.current = epoch0;
    this.previous = null; // {epoch, until}
    this.changedAt = now();
    this.peers = new Map(); // participant id -> {publicKey, sealed (epoch we sealed to it, or -1), status}
    this.excluded = new Set(); // removed by a rotation: never sealed to again until they rejoin
    this.sending = new Map(); // context -> {epoch, kid, key (Promise), ctr}
    this.lastStatus = null; // {epoch, state} we last broadcast
    this.lock = Promise.resolve();
    this.onchange = null;
    this.stats = { encrypted: 0, decrypted: 0, decryptFailures: 0, badMessages: 0, epochsReceived: 0, sealed: 0 };
  }

  /**
   * secret: S0 (32 bytes); participant: our participant id; host: whether
   * we hand out new epochs; now: a clock in ms (tests); index: our 48-bit
   * index (random unless given).
   */
  static async create({ secret, participant, host = false, now = () => Date.now(), index }) {
    if (!(secret instanceof Uint8Array) || secret.length !== SECRET_LEN) throw new Error("the conference secret is 32 bytes");
    if (typeof participant !== "string" || !participant) throw new Error("a participant id is needed");
    return new E2ee({
      participant,
      host,
      now,
      index: index === undefined ? randomBytes(6).reduce((n, b) => n * 256 + b, 0) : index,
      auth: await hmacKey(await authKey(secret)),
      keyPair: await x25519Generate(),
      epoch0: await Epoch.make(0, Uint8Array.from(secret), null),
    });
  }

  /** The current epoch's number. */
  get epoch() {
    return this.current.n;
  }

  /** The current epoch's safety code. */
  get safetyCode() {
    return this.current.code;
  }

  /** Our public key (raw, 32 bytes). */
  get publicKey() {
    return this.keyPair.publicKey;
  }

  emit(event) {
    try {
      this.onchange?.(event);
    } catch {}
  }

  /** Runs state changes one at a time (messages, rotations). */
  serialize(fn) {
    const run = this.lock.then(fn);
    this.lock = run.catch(() => {});
    return run;
  }

  /** Our announce, for everyone: {data}. */
  async announce() {
    return { data: toBase64url(await buildAnnounce(this.auth, this.keyPair.publicKey, this.participant)) };
  }

  /** Our announce addressed to one participant. */
  async announceTo(to) {
    return { to, ...(await this.announce()) };
  }

  /** A status for everyone if (epoch, state) differs from what we last said, else null. */
  async status(state) {
    state = state ? STATE_SOME_FAIL : STATE_OK;
    const epoch = this.current.n;
    if (this.lastStatus && this.lastStatus.epoch === epoch && this.lastStatus.state === state) return null;
    this.lastStatus = { epoch, state };
    return { data: toBase64url(await buildStatus(this.auth, epoch, state, this.participant)) };
  }

  /** Our last status, addressed to one participant (a newcomer), or null. */
  async statusTo(to) {
    const s = this.lastStatus;
    if (!s) return null;
    return { to, data: toBase64url(await buildStatus(this.auth, s.epoch, s.state, this.participant)) };
  }

  /**
   * Handles an `e2ee` message's data from `from`. Resolves with the
   * messages to send in answer; never rejects. A message that is not
   * well-formed or whose mac does not verify is counted and ignored.
   */
  receive(from, data, host = false) {
    return this.serialize(async () => {
      try {
        const bytes = fromBase64url(data);
        if (typeof from !== "string" || !from || from === this.participant || !bytes || !bytes.length) {
          this.stats.badMessages++;
          return [];
        }
        switch (bytes[0]) {
          case MSG_ANNOUNCE:
            return await this.onAnnounce(from, bytes, host);
          case MSG_EPOCH:
            // Only a host hands out epochs (the relay says who is one).
            if (!host) {
              this.stats.badMessages++;
              return [];
            }
            return await this.onEpoch(from, bytes);
          case MSG_STATUS:
            return await this.onStatus(from, bytes, host);
          default:
            this.stats.badMessages++;
            return [];
        }
      } catch {
        this.stats.badMessages++;
        return [];
      }
    });
  }

  async onAnnounce(from, bytes, fromHost = false) {
    const a = await verifyAnnounce(this.auth, bytes, from);
    if (!a) {
      this.stats.badMessages++;
      return [];
    }
    // A key we could not seal to (small order, not on the curve) is refused
    // here, so it can never make a rotation fail later.
    try {
      await dh(this.keyPair.privateKey, a.publicKey);
    } catch {
      this.stats.badMessages++;
      return [];
    }
    const out = [];
    let peer = this.peers.get(from);
    const first = !peer || !peer.publicKey;
    const seen = peer && peer.publicKey && equalBytes(peer.publicKey, a.publicKey);
    if (!seen) {
      // A new participant, or a new session of one.
      peer = { publicKey: a.publicKey, sealed: -1, sealedAt: peer?.sealedAt ?? -Infinity, status: peer?.status ?? null };
      this.peers.set(from, peer);
      if (first) {
        // Only hosts need others' keys: a host that came after us gets
        // ours; a newcomer gets what we last said. Once per participant,
        // so key changes cannot make us flood.
        if (fromHost) out.push(await this.announceTo(from));
        const s = await this.statusTo(from);
        if (s) out.push(s);
      }
      this.emit({ type: "peer", participant: from });
    }
    // The host's duty: whoever announces and lacks the current epoch gets
    // it, at most once a second each.
    const now = this.now();
    if (this.host && this.current.n > 0 && peer.sealed !== this.current.n && !this.excluded.has(from) && now - peer.sealedAt >= RESEAL_MS) {
      peer.sealedAt = now;
      out.push(await this.sealTo(from, peer));
    }
    return out;
  }

  async sealTo(to, peer, e = this.current) {
    const { enc, ciphertext } = await sealEpochSecret(peer.publicKey, e.n, to, e.secret);
    peer.sealed = e.n;
    this.stats.sealed++;
    return { to, data: toBase64url(await buildEpoch(this.auth, e.n, enc, ciphertext, to)) };
  }

  async onEpoch(from, bytes) {
    const m = await verifyEpoch(this.auth, bytes, this.participant);
    if (!m || m.epoch > MAX_EPOCH) {
      this.stats.badMessages++;
      return [];
    }
    const cur = this.current;
    // Only a later epoch, or (two hosts rotating at once) the same one from
    // a sender whose id sorts before the one we took it from.
    const sameFromEarlier = m.epoch === cur.n && cur.from !== null && compareIds(from, cur.from) < 0;
    if (m.epoch < cur.n || (m.epoch === cur.n && !sameFromEarlier)) return [];
    const secret = await openEpochSecret(this.keyPair, m.epoch, this.participant, m.enc, m.ciphertext);
    if (!secret) {
      this.stats.badMessages++;
      return [];
    }
    if (m.epoch === cur.n && equalBytes(secret, cur.secret)) {
      cur.from = from; // the same secret: remember the sender that sorts first
      return [];
    }
    this.stats.epochsReceived++;
    await this.adopt(await Epoch.make(m.epoch, secret, from), m.epoch === cur.n);
    return [];
  }

  /** Makes `next` the current epoch; `replace`: it supersedes one of the same number. */
  async adopt(next, replace = false, reason = null) {
    const before = this.current;
    if (!replace) this.previous = { epoch: before, until: this.now() + PREVIOUS_EPOCH_MS };
    this.current = next;
    this.changedAt = this.now();
    // What we send from now on is under the new epoch, counters from 0.
    this.sending.clear();
    this.emit({ type: "epoch", epoch: next.n, from: next.from, previous: before.n, reason });
  }

  async onStatus(from, bytes, host = false) {
    const s = await verifyStatus(this.auth, bytes, from);
    if (!s) {
      this.stats.badMessages++;
      return [];
    }
    const peer = this.peers.get(from);
    // `host`: the relay says the sender may moderate; only a host's word on
    // epochs may move a host's keys (the page decides what to do with it).
    const status = { epoch: s.epoch, state: s.state, at: this.now(), host: !!host };
    if (peer) peer.status = status;
    else this.peers.set(from, { publicKey: null, sealed: -1, status });
    this.emit({ type: "status", participant: from });
    return [];
  }

  /**
   * The host's rotation: forgets `excluded` (ids), makes epoch n+1 from 32
   * random bytes and resolves with one epoch message for every remaining
   * participant whose key we know ({to, data}). We encrypt under it at once.
   * `reason` is passed on in the "epoch" event (for the page's words).
   * `after`: an epoch others are known to be at (a host whose page was
   * reloaded starts again at 0): the new epoch is above it too.
   */
  rotate(excluded = [], reason = null, after = 0) {
    // Excluded at once, so that a participant_left racing a removal sees it.
    for (const id of excluded) {
      this.peers.delete(id);
      this.excluded.add(id);
    }
    return this.serialize(async () => {
      // What others say moves us up by a bounded step only, so no status
      // can push the epochs to their end.
      const above = Math.min(after >>> 0, this.current.n + CATCH_UP_MAX);
      const n = Math.max(this.current.n, above) + 1;
      if (n > MAX_EPOCH) return [];
      const next = await Epoch.make(n, randomBytes(SECRET_LEN), this.participant);
      const out = [];
      for (const [id, peer] of this.peers) {
        if (!peer.publicKey || this.excluded.has(id)) continue;
        try {
          out.push(await this.sealTo(id, peer, next));
        } catch {
          // One peer we cannot seal to never keeps the others from the new keys.
          this.stats.badMessages++;
        }
      }
      // Sealed first, adopted last: the messages leave before our first
      // datagram under the new epoch, so fewer arrive ahead of the key.
      await this.adopt(next, false, reason);
      return out;
    });
  }

  /** A participant left: forget its key and status. Returns whether a rotation already excluded it. */
  forget(id) {
    this.peers.delete(id);
    return this.excluded.has(id);
  }

  /** A participant (re)joined through the router: a rotation's exclusion no longer applies. */
  joined(id) {
    this.excluded.delete(id);
  }

  /** What a peer last said about itself: {epoch, state, at} or null. */
  peerStatus(id) {
    return this.peers.get(id)?.status ?? null;
  }

  /** Whether we hold a peer's announced key. */
  knows(id) {
    return !!this.peers.get(id)?.publicKey;
  }

  /**
   * Encrypts one datagram (9-byte wire header, then the plaintext payload)
   * of our track in slot `context` (0 to 7) under the current epoch: the
   * wire header unchanged, then SFrame header || ciphertext || tag, with
   * the wire header as SFrame metadata. The KID and counter are taken at
   * once, so datagrams handed in one after another get increasing counters
   * whatever order WebCrypto finishes in.
   */
  async encryptDatagram(datagram, context) {
    if (!(datagram instanceof Uint8Array) || datagram.length < WIRE_HEADER) throw new Error("not a datagram");
    const epoch = this.current;
    let s = this.sending.get(context);
    if (!s || s.epoch !== epoch) {
      const kid = makeKid(context, this.index, epoch.n);
      s = { epoch, kid, key: deriveSframeKey(epoch.baseKey, kid), ctr: 0n };
      this.sending.set(context, s);
    }
    const ctr = s.ctr;
    s.ctr += 1n;
    const wire = datagram.subarray(0, WIRE_HEADER);
    const sealed = await sframeEncrypt(await s.key, s.kid, ctr, datagram.subarray(WIRE_HEADER), wire);
    this.stats.encrypted++;
    return concat(wire, sealed);
  }

  /** The epochs a KID's low 4 bits may name: the current one, and the previous one for 10 s. */
  candidates(epochBits) {
    const out = [];
    if (this.current.n % 16 === epochBits) out.push(this.current);
    const p = this.previous;
    if (p && this.now() >= p.until) this.previous = null;
    else if (p && p.epoch.n % 16 === epochBits) out.push(p.epoch);
    return out;
  }

  /**
   * Decrypts one datagram: {data (wire header || plaintext payload),
   * epoch, kid} or null on any failure (too short, a KID of no epoch we
   * hold, a wire header or payload that does not authenticate). Never
   * throws on what it is given.
   */
  async open(datagram) {
    const r = await this.tryOpen(datagram);
    if (r) this.stats.decrypted++;
    else this.stats.decryptFailures++;
    return r;
  }

  async tryOpen(datagram) {
    if (!(datagram instanceof Uint8Array) || datagram.length < WIRE_HEADER + 1 + SFRAME_NT) return null;
    try {
      const wire = datagram.subarray(0, WIRE_HEADER);
      const body = datagram.subarray(WIRE_HEADER);
      const header = parseSframeHeader(body);
      const kid = header && splitKid(header.kid);
      if (!kid) return null;
      for (const epoch of this.candidates(kid.epochBits)) {
        const key = await epoch.key(header.kid);
        const r = await sframeDecrypt(key, body, wire);
        if (!r) continue;
        epoch.keep(header.kid, key);
        return { data: concat(wire, r.plaintext), epoch: epoch.n, kid: header.kid };
      }
    } catch {}
    return null;
  }

  /** Decrypts one datagram: wire header || plaintext payload, or null on any failure. */
  async decryptDatagram(datagram) {
    return (await this.open(datagram))?.data ?? null;
  }
}
