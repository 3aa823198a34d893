// The body of an async function (m, sframe, hpke) run inside the call
// page, in Chromium, to check src/router/page/e2ee.js:
//
//   m       the module, from `await import("/static/e2ee.js")`
//   sframe  tests/vectors/rfc9605.json (RFC 9605 Appendix C)
//   hpke    tests/vectors/rfc9180-base-x25519-sha256-aes128gcm.json (RFC 9180 A.1)
//
// Either vector file may be passed as its JSON text rather than parsed:
// some header vectors hold 64-bit numbers that a plain JSON.parse rounds,
// and from text they are read exactly (as BigInts). Rounded numbers are
// checked as far as they can be (parse, re-encode, compare as doubles)
// and counted apart as `header_rounded`.
//
// Resolves with {checked: {what: count}, failures: [text]}; a mismatch is
// reported in `failures`, never thrown.

const checked = {};
const failures = [];
const count = (what) => (checked[what] = (checked[what] ?? 0) + 1);
const show = (v) => (v instanceof Uint8Array ? m.toHex(v) : typeof v === "bigint" ? `${v}n` : typeof v === "string" ? v : JSON.stringify(v));
/** Records a failure unless `got` equals `want` (bytes compared as hex); returns whether they matched. */
const same = (what, got, want) => {
  const g = got instanceof Uint8Array ? m.toHex(got) : got;
  const w = want instanceof Uint8Array ? m.toHex(want) : want;
  if (g === w) return true;
  failures.push(`${what}: got ${show(got)}, want ${show(w)}`);
  return false;
};
const ok = (what, condition) => {
  if (!condition) failures.push(what);
  return !!condition;
};
/** Runs one check, turning an exception into a failure. */
const check = async (what, fn) => {
  try {
    if ((await fn()) !== false) count(what);
  } catch (e) {
    failures.push(`${what}: threw ${e?.stack ?? e}`);
  }
};
const readJson = (x) =>
  typeof x !== "string"
    ? x
    : JSON.parse(x, (key, value, context) =>
        typeof value === "number" && !Number.isSafeInteger(value) && context?.source ? BigInt(context.source) : value,
      );
const hex = m.fromHex;
const exact = (v) => typeof v === "bigint" || typeof v === "string" || Number.isSafeInteger(v);

sframe = readJson(sframe);
hpke = readJson(hpke);

// ---------------------------------------------------------------- HKDF (RFC 5869 A.1)

await check("hkdf", async () => {
  const prk = await m.hkdfExtract(hex("000102030405060708090a0b0c"), hex("0b".repeat(22)));
  const okm = await m.hkdfExpand(prk, hex("f0f1f2f3f4f5f6f7f8f9"), 42);
  return (
    same("hkdf prk", prk, "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5") &&
    same("hkdf okm", okm, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
  );
});

// ---------------------------------------------------------------- SFrame headers

for (const v of sframe.header ?? []) {
  const name = `header kid=${v.kid} ctr=${v.ctr}`;
  if (exact(v.kid) && exact(v.ctr)) {
    await check("header", () => {
      const encoded = same(`${name} encode`, m.encodeSframeHeader(BigInt(v.kid), BigInt(v.ctr)), v.encoded);
      const p = m.parseSframeHeader(hex(v.encoded));
      return (
        encoded &&
        ok(`${name} parse`, p) &&
        same(`${name} parse kid`, p.kid, BigInt(v.kid)) &&
        same(`${name} parse ctr`, p.ctr, BigInt(v.ctr)) &&
        same(`${name} parse length`, p.length, v.encoded.length / 2)
      );
    });
  } else {
    await check("header_rounded", () => {
      const p = m.parseSframeHeader(hex(v.encoded));
      return (
        ok(`${name} parse`, p) &&
        same(`${name} parse kid`, Number(p.kid), Number(v.kid)) &&
        same(`${name} parse ctr`, Number(p.ctr), Number(v.ctr)) &&
        same(`${name} re-encode`, m.encodeSframeHeader(p.kid, p.ctr), v.encoded)
      );
    });
  }
}
await check("header_truncated", () => {
  const full = m.encodeSframeHeader(0x0123456789n, 0xffffn);
  for (let n = 0; n < full.length; n++) if (!ok(`header cut to ${n} bytes parses`, m.parseSframeHeader(full.subarray(0, n)) === null)) return false;
  return true;
});

// ---------------------------------------------------------------- SFrame encryption (suite 0x0004)

for (const v of (sframe.sframe ?? []).filter((v) => v.cipher_suite === m.SFRAME_SUITE)) {
  const name = `sframe kid=${v.kid} ctr=${v.ctr}`;
  await check("sframe", async () => {
    const kid = BigInt(v.kid);
    const ctr = BigInt(v.ctr);
    const material = await m.deriveSframeKeyMaterial(hex(v.base_key), kid);
    const key = await m.deriveSframeKey(hex(v.base_key), kid);
    const metadata = hex(v.metadata);
    const header = m.encodeSframeHeader(kid, ctr);
    const ct = await m.sframeEncrypt(key, kid, ctr, hex(v.pt), metadata);
    const back = await m.sframeDecrypt(key, hex(v.ct), metadata);
    const tampered = hex(v.ct);
    tampered[tampered.length - 1] ^= 1;
    return (
      same(`${name} sframe_secret`, material.secret, v.sframe_secret) &&
      same(`${name} sframe_key`, material.key, v.sframe_key) &&
      same(`${name} sframe_salt`, material.salt, v.sframe_salt) &&
      same(`${name} nonce`, m.sframeNonce(material.salt, ctr), v.nonce) &&
      same(`${name} aad`, m.concat(header, metadata), v.aad) &&
      same(`${name} ct`, ct, v.ct) &&
      ok(`${name} decrypts`, back) &&
      same(`${name} pt`, back.plaintext, v.pt) &&
      same(`${name} kid back`, back.kid, kid) &&
      same(`${name} ctr back`, back.ctr, ctr) &&
      ok(`${name} other metadata refused`, (await m.sframeDecrypt(key, hex(v.ct), m.concat(metadata, [0]))) === null) &&
      ok(`${name} tampered tag refused`, (await m.sframeDecrypt(key, tampered, metadata)) === null)
    );
  });
}

// ---------------------------------------------------------------- HPKE (RFC 9180)

for (const [i, v] of hpke.entries()) {
  const name = `hpke[${i}]`;
  if (v.mode !== 0 || v.kem_id !== m.KEM_ID || v.kdf_id !== m.KDF_ID || v.aead_id !== m.AEAD_ID) {
    failures.push(`${name}: not base mode X25519/SHA-256/AES-128-GCM`);
    continue;
  }
  const info = hex(v.info);
  await check("hpke_derive_key_pair", async () => {
    const r = await m.hpkeDeriveKeyPair(hex(v.ikmR));
    const e = await m.hpkeDeriveKeyPair(hex(v.ikmE));
    return (
      same(`${name} skRm`, r.sk, v.skRm) &&
      same(`${name} pkRm`, r.publicKey, v.pkRm) &&
      same(`${name} skEm`, e.sk, v.skEm) &&
      same(`${name} pkEm`, e.publicKey, v.pkEm)
    );
  });
  const recipient = await m.x25519FromPrivate(hex(v.skRm));
  await check("hpke_setup_r", async () => {
    const { sharedSecret, context: c } = await m.hpkeSetupBaseR(hex(v.enc), recipient, info);
    return (
      same(`${name} R shared_secret`, sharedSecret, v.shared_secret) &&
      same(`${name} R key_schedule_context`, c.keyScheduleContext, v.key_schedule_context) &&
      same(`${name} R secret`, c.secret, v.secret) &&
      same(`${name} R key`, c.key, v.key) &&
      same(`${name} R base_nonce`, c.baseNonce, v.base_nonce) &&
      same(`${name} R exporter_secret`, c.exporterSecret, v.exporter_secret)
    );
  });
  await check("hpke_setup_s", async () => {
    const { enc, sharedSecret, context: c } = await m.hpkeSetupBaseS(hex(v.pkRm), info, hex(v.ikmE));
    return (
      same(`${name} S enc`, enc, v.enc) &&
      same(`${name} S shared_secret`, sharedSecret, v.shared_secret) &&
      same(`${name} S key`, c.key, v.key) &&
      same(`${name} S base_nonce`, c.baseNonce, v.base_nonce)
    );
  });
  // Every encryption, in order, through one receiving and one sending context.
  const { context: r } = await m.hpkeSetupBaseR(hex(v.enc), recipient, info);
  const { context: s } = await m.hpkeSetupBaseS(hex(v.pkRm), info, hex(v.ikmE));
  for (const [j, e] of (v.encryptions ?? []).entries()) {
    await check("hpke_open", async () => {
      const nonce = same(`${name} encryption ${j} nonce`, r.nonce(r.seq), e.nonce);
      const pt = await r.open(hex(e.aad), hex(e.ct));
      return nonce && ok(`${name} encryption ${j} opens`, pt) && same(`${name} encryption ${j} pt`, pt, e.pt);
    });
    await check("hpke_seal", async () => same(`${name} encryption ${j} sealed`, await s.seal(hex(e.aad), hex(e.pt)), e.ct));
  }
  for (const [j, x] of (v.exports ?? []).entries()) {
    await check("hpke_export", async () => same(`${name} export ${j}`, await r.export(hex(x.exporter_context), x.L), x.exported_value));
  }
  const first = v.encryptions?.[0];
  if (first) {
    await check("hpke_single_shot", async () => {
      const sealed = await m.hpkeSeal(hex(v.pkRm), info, hex(first.aad), hex(first.pt), hex(v.ikmE));
      const opened = await m.hpkeOpen(hex(v.enc), recipient, info, hex(first.aad), hex(first.ct));
      const wrong = await m.hpkeOpen(hex(v.enc), recipient, m.concat(info, [0]), hex(first.aad), hex(first.ct));
      return (
        same(`${name} single-shot enc`, sealed.enc, v.enc) &&
        same(`${name} single-shot ct`, sealed.ct, first.ct) &&
        same(`${name} single-shot open`, opened, first.pt) &&
        ok(`${name} other info refused`, wrong === null)
      );
    });
  }
}

// ---------------------------------------------------------------- helpers of the scheme

await check("base64url", () => {
  const bytes = m.randomBytes(32);
  const text = m.toBase64url(bytes);
  return (
    ok("base64url: 43 characters for 32 bytes", text.length === 43 && /^[A-Za-z0-9_-]+$/.test(text)) &&
    same("base64url round trip", m.fromBase64url(text), bytes) &&
    same("base64url of 00 ff fe", m.toBase64url(new Uint8Array([0, 0xff, 0xfe])), "AP_-") &&
    ok("base64url refuses padding", m.fromBase64url("AP8=") === null) &&
    ok("base64url refuses +/", m.fromBase64url("AP+/") === null) &&
    ok("base64url refuses stray bits", m.fromBase64url("AB") === null) &&
    ok("base64url refuses a 1-character tail", m.fromBase64url("AAAAA") === null) &&
    same("conference secret from a link", m.parseConferenceSecret(`https://x.example/j/c1#p=1234&k=${text}`), bytes) &&
    same("conference secret alone", m.parseConferenceSecret(` ${text} `), bytes) &&
    ok("conference secret: too short", m.parseConferenceSecret(text.slice(1)) === null)
  );
});

await check("kid_layout", () => {
  const kid = m.makeKid(7, 2 ** 48 - 1, 31);
  const split = m.splitKid(kid);
  return (
    same("kid of context 7, index 2^48-1, epoch 31", kid, (7n << 52n) | (0xffffffffffffn << 4n) | 15n) &&
    same("kid split", JSON.stringify(split), JSON.stringify({ context: 7, index: 2 ** 48 - 1, epochBits: 15 })) &&
    same("largest header + tag is the overhead", m.encodeSframeHeader(kid, (1n << 64n) - 1n).length + 16, m.OVERHEAD) &&
    same("overhead", m.OVERHEAD, 32)
  );
});

await check("safety_code", async () => {
  const code = await m.safetyCode(m.randomBytes(32));
  return ok(`safety code ${code} is 12 digits in 3 groups`, /^\d{4} \d{4} \d{4}$/.test(code));
});

// ---------------------------------------------------------------- participants exchanging keys

let clock = 1_000_000;
const now = () => clock;
const s0 = m.randomBytes(32);
const make = (participant, host = false) => m.E2ee.create({ secret: s0, participant, host, now });

/**
 * A relay in miniature: delivers each message ({to, data} or {data} for
 * everyone) from `from` to its recipients, and their answers in turn.
 * `drop` names participants the relay no longer reaches.
 */
const deliver = async (all, from, messages, drop = new Set()) => {
  const queue = messages.map((msg) => [from, msg]);
  let delivered = 0;
  while (queue.length) {
    const [sender, msg] = queue.shift();
    const targets = msg.to ? [msg.to] : Object.keys(all).filter((id) => id !== sender);
    for (const id of targets) {
      if (drop.has(id) || !all[id]) continue;
      delivered++;
      // The relay says whether the sender is a host, as it says who sent it.
      for (const answer of await all[id].receive(sender, msg.data, all[sender]?.host === true)) queue.push([id, answer]);
    }
  }
  return delivered;
};

/** A datagram of format 2: header (version 2, flags, track, sequence, info), then `payload`. */
const WIRE = 10;
const datagram = (track, sequence, flags, payload) => {
  const d = new Uint8Array(WIRE + payload.length);
  d[0] = (2 << 5) | flags;
  new DataView(d.buffer).setUint32(1, track);
  new DataView(d.buffer).setUint32(5, sequence);
  d[9] = 0x40; // a video datagram of layer 1
  d.set(payload, WIRE);
  return d;
};
const payload = m.utf8("one fragment of a frame, with its payload header");

await check("scheme_round_trip", async () => {
  const all = { host: await make("host", true), bob: await make("bob"), carol: await make("carol") };
  for (const [id, e] of Object.entries(all)) await deliver(all, id, [await e.announce()]);
  let good =
    ok("everyone knows everyone's key", ["host", "bob", "carol"].every((a) => ["host", "bob", "carol"].every((b) => a === b || all[a].knows(b)))) &&
    same("epoch 0 everywhere", [all.host.epoch, all.bob.epoch, all.carol.epoch].join(), "0,0,0") &&
    ok("epoch 0 safety codes agree", all.host.safetyCode === all.bob.safetyCode && all.bob.safetyCode === all.carol.safetyCode);

  // Epoch 0: Bob's datagram decrypts for everyone, header unchanged.
  const plain0 = datagram(42, 7, 0b011, payload);
  const sealed0 = await all.bob.encryptDatagram(plain0, 0);
  good &&=
    same("the wire header stays", sealed0.subarray(0, WIRE), plain0.subarray(0, WIRE)) &&
    ok(`overhead ${sealed0.length - plain0.length} within ${m.OVERHEAD}`, sealed0.length - plain0.length <= m.OVERHEAD) &&
    same("epoch 0: the host decrypts", await all.host.decryptDatagram(sealed0), plain0) &&
    same("epoch 0: Carol decrypts", await all.carol.decryptDatagram(sealed0), plain0);

  // The host removes Carol: epoch 1, sealed to Bob only.
  clock += 1000;
  const rotation = await all.host.rotate(["carol"]);
  good &&=
    same("one epoch message per remaining participant", JSON.stringify(rotation.map((x) => x.to)), JSON.stringify(["bob"])) &&
    ok("epoch messages fit an e2ee control message", rotation.every((x) => x.data.length <= 512));
  // The same message, said to come from someone who is not a host: refused.
  const bobBad = all.bob.stats.badMessages;
  await all.bob.receive("host", rotation[0].data, false);
  good &&= same("an epoch message not from a host is refused", all.bob.epoch, 0) && ok("…as noise", all.bob.stats.badMessages === bobBad + 1);
  // A relay that hands Bob's message to Carol gets nothing for it.
  await all.carol.receive("host", rotation[0].data, true);
  good &&= same("Carol cannot take Bob's epoch message", all.carol.epoch, 0);
  const badBefore = all.carol.stats.badMessages;
  good &&= ok("…and counts it as noise", badBefore > 0);
  await deliver(all, "host", rotation, new Set(["carol"]));
  good &&=
    same("the host is at epoch 1", all.host.epoch, 1) &&
    same("Bob is at epoch 1", all.bob.epoch, 1) &&
    same("Carol stays at epoch 0", all.carol.epoch, 0) &&
    ok("host and Bob show the same code", all.host.safetyCode === all.bob.safetyCode) &&
    ok("Carol's code differs", all.carol.safetyCode !== all.bob.safetyCode);

  // Under epoch 1: members decrypt, Carol does not.
  const plain1 = datagram(42, 8, 0b010, payload);
  const sealed1 = await all.bob.encryptDatagram(plain1, 0);
  const opened = await all.host.open(sealed1);
  good &&=
    ok("epoch 1: the host decrypts", opened && m.equalBytes(opened.data, plain1)) &&
    same("epoch 1: decrypted under epoch 1", opened?.epoch, 1) &&
    ok("epoch 1: Carol cannot decrypt", (await all.carol.decryptDatagram(sealed1)) === null) &&
    same("epoch 1: Bob decrypts the host's", await all.bob.decryptDatagram(await all.host.encryptDatagram(plain1, 1)), plain1);

  // Carol, still on epoch 0, is read by the host for 10 s after the change, then no more.
  const fromCarol = await all.carol.encryptDatagram(plain0, 0);
  good &&= same("the previous epoch decrypts for 10 s", await all.host.decryptDatagram(fromCarol), plain0);
  clock += 10_000;
  good &&= ok("…and not after", (await all.host.decryptDatagram(await all.carol.encryptDatagram(plain0, 0))) === null);

  // Tampering with any part of an encrypted datagram makes it fail.
  const flip = (at, bit = 1) => {
    const d = Uint8Array.from(sealed1);
    d[at] ^= bit;
    return d;
  };
  // The same datagram claiming epoch 3 (its KID's low bits), which nobody holds.
  const h1 = m.parseSframeHeader(sealed1.subarray(WIRE));
  const otherEpoch = m.concat(sealed1.subarray(0, WIRE), m.encodeSframeHeader((h1.kid & ~0xfn) | 3n, h1.ctr), sealed1.subarray(WIRE + h1.length));
  const moved = Uint8Array.from(sealed1);
  new DataView(moved.buffer).setUint32(1, 43);
  for (const [what, d] of [
    ["a flag bit of the wire header", flip(0, 0b100)],
    ["the keyframe flag", flip(0, 0b001)],
    ["the track id", moved],
    ["the sequence number", flip(8)],
    ["the SFrame header", flip(9, 0x01)],
    ["the ciphertext", flip(20)],
    ["the tag", flip(sealed1.length - 1)],
    ["cut short", sealed1.subarray(0, sealed1.length - 1)],
    ["only a header", sealed1.subarray(0, 12)],
    ["empty", new Uint8Array(0)],
    ["random bytes", m.randomBytes(200)],
    ["a KID of no epoch held", otherEpoch],
  ]) {
    good &&= ok(`tampered (${what}) fails`, (await all.host.decryptDatagram(d)) === null);
  }
  good &&= ok("not a Uint8Array fails", (await all.host.decryptDatagram("nonsense")) === null);

  // A newcomer after the rotation gets epoch 1 from the host on announcing.
  all.dave = await make("dave");
  await deliver(all, "dave", [await all.dave.announce()], new Set(["carol"]));
  good &&=
    same("the newcomer is at epoch 1", all.dave.epoch, 1) &&
    same("…with the same code", all.dave.safetyCode, all.host.safetyCode) &&
    same("…and reads Bob", await all.dave.decryptDatagram(await all.bob.encryptDatagram(plain1, 0)), plain1);
  // Carol, excluded, announcing again before she is gone gets nothing.
  await deliver(all, "carol", [await all.carol.announce()]);
  good &&= same("an excluded participant is not sealed to", all.carol.epoch, 0);

  // Status messages, and forgeries of them.
  const status = await all.bob.status(0);
  await deliver(all, "bob", [status], new Set(["carol"]));
  good &&=
    same("status reaches the host", JSON.stringify(all.host.peerStatus("bob") && [all.host.peerStatus("bob").epoch, all.host.peerStatus("bob").state]), "[1,0]") &&
    ok("an unchanged status is not sent again", (await all.bob.status(0)) === null) &&
    ok("a changed one is", (await all.bob.status(1)) !== null);
  const forged = await all.carol.receive("host", status.data); // Bob's status with the host's id
  good &&= ok("a status under another id is noise", forged.length === 0 && all.carol.peerStatus("host") === null);
  good &&= ok("garbage data is noise", (await all.host.receive("bob", "!!!")).length === 0 && (await all.host.receive("bob", "AQ")).length === 0);

  // Counters in every datagram grow: two datagrams never share a nonce.
  const a = await all.bob.encryptDatagram(plain1, 2);
  const b = await all.bob.encryptDatagram(plain1, 2);
  const ha = m.parseSframeHeader(a.subarray(WIRE));
  const hb = m.parseSframeHeader(b.subarray(WIRE));
  good &&= ok("same KID, next counter", ha.kid === hb.kid && hb.ctr === ha.ctr + 1n && m.splitKid(ha.kid).context === 2);
  // The header's info byte (a layer, an audio level) is authenticated too.
  const flipped = a.slice();
  flipped[9] ^= 0x40;
  good &&= ok("a changed layer byte does not decrypt", (await all.host.decryptDatagram(flipped)) === null && (await all.host.decryptDatagram(a)) !== null);
  return good;
});

await check("two_hosts_rotating", async () => {
  const all = { ann: await make("ann", true), zed: await make("zed", true), max: await make("max") };
  for (const [id, e] of Object.entries(all)) await deliver(all, id, [await e.announce()]);
  const fromAnn = await all.ann.rotate([]);
  const fromZed = await all.zed.rotate([]);
  await deliver(all, "zed", fromZed);
  await deliver(all, "ann", fromAnn);
  const codes = Object.values(all).map((e) => `${e.epoch}:${e.safetyCode}`);
  return (
    ok(`everyone ends on the same epoch 1 (${codes.join(", ")})`, codes.every((c) => c === codes[0]) && all.max.epoch === 1) &&
    same("…the one whose sender sorts first", all.max.current.from, "ann") &&
    same("Max reads Zed", await all.max.decryptDatagram(await all.zed.encryptDatagram(datagram(1, 1, 0, payload), 0)), datagram(1, 1, 0, payload))
  );
});

return { checked, failures };
