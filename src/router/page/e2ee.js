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

import { compareIds, concat, equalBytes, fromBase64url, randomBytes, toBase64url, u32, utf8 } from "./bytes.js";
import { HASH_LEN, hkdfExpand, hmacKey, hmacSha256, hmacVerify } from "./hkdf.js";
import { dh, hpkeOpen, hpkeSeal, X25519_LEN, x25519Generate } from "./hpke.js";
import { deriveSframeKey, parseSframeHeader, SFRAME_NK, SFRAME_NT, sframeDecrypt, sframeEncrypt } from "./sframe.js";
import { HEADER_LEN as WIRE_HEADER } from "./wire.js";

// The primitives too, for the test vectors that check them through this module.
export * from "./bytes.js";
export * from "./hkdf.js";
export * from "./sframe.js";
export * from "./hpke.js";

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
   * Encrypts one datagram (10-byte wire header, then the plaintext payload)
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
