//! The records key: a copy of the store alone reveals neither client
//! addresses nor passcodes, and the key rotates without losing bans or
//! passcodes while the previous key is listed. Routers and relays of the
//! dev config in this process; clients at 127.0.0.x.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use residency_relay::secret::RecordsKey;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use support::cluster::{Cluster, join_from, kick, open_conference, refused_code};

const CLIENTS: [&str; 5] = [
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
];

/// What a copy of the SQLite store holds: every 32-byte value of `meta`
/// (anything that could be a key or a salt), the address hashes of
/// participants and bans, and the conferences' passcode salts and hashes.
struct Stolen {
    meta: Vec<[u8; 32]>,
    address_hashes: HashSet<[u8; 32]>,
    passcodes: Vec<([u8; 16], [u8; 32])>,
}

fn steal(db: &Path) -> Stolen {
    let copy = tempfile::tempdir().unwrap();
    let name = db.file_name().unwrap().to_str().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = db.with_file_name(format!("{name}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("{name}{suffix}"))).unwrap();
        }
    }
    let conn = Connection::open(copy.path().join(name)).unwrap();
    let blobs = |sql: &str| -> Vec<Vec<u8>> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let meta = blobs("SELECT value FROM meta")
        .into_iter()
        .filter_map(|v| v.try_into().ok())
        .collect();
    let address_hashes =
        blobs("SELECT address_hash FROM participants UNION SELECT address_hash FROM bans")
            .into_iter()
            .map(|v| v.try_into().unwrap())
            .collect();
    let passcodes = conn
        .prepare("SELECT passcode_salt, passcode_sha256 FROM conferences WHERE passcode_salt IS NOT NULL")
        .unwrap()
        .query_map([], |r| {
            let salt: Vec<u8> = r.get(0)?;
            let hash: Vec<u8> = r.get(1)?;
            Ok((salt.try_into().unwrap(), hash.try_into().unwrap()))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    Stolen {
        meta,
        address_hashes,
        passcodes,
    }
}

fn salted(salt: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(data);
    h.finalize().into()
}

/// Every address of 127.0.0.0/16 (a superset of the clients': the search
/// over all of IPv4 is this one, 65,536 times longer) whose hash, by any of
/// `candidates` (a salt and an optional key), is in the store.
fn addresses_found(
    stolen: &Stolen,
    candidates: &[([u8; 32], Option<RecordsKey>)],
) -> HashSet<Ipv4Addr> {
    let mut found = HashSet::new();
    for n in 0..=u16::MAX {
        let ip = Ipv4Addr::new(127, 0, (n >> 8) as u8, n as u8);
        for (salt, key) in candidates {
            let unkeyed = salted(salt, &ip.octets());
            let hash = match key {
                Some(key) => key.address(&unkeyed),
                None => unkeyed,
            };
            if stolen.address_hashes.contains(&hash) {
                found.insert(ip);
            }
        }
    }
    found
}

/// The passcodes among `tried` whose hash, by any of `candidates`, is in
/// the store.
fn passcodes_found(
    stolen: &Stolen,
    tried: &[String],
    candidates: &[Option<RecordsKey>],
) -> HashSet<String> {
    let mut found = HashSet::new();
    for code in tried {
        for (salt, stored) in &stolen.passcodes {
            let unkeyed = salted(salt, code.as_bytes());
            for key in candidates {
                let hash = match key {
                    Some(key) => key.passcode(&unkeyed),
                    None => unkeyed,
                };
                if &hash == stored {
                    found.insert(code.clone());
                }
            }
        }
    }
    found
}

fn random_passcode() -> String {
    let mut bytes = [0u8; 7];
    getrandom::fill(&mut bytes).unwrap();
    let mut code = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    code.truncate(10);
    code
}

/// The copy of the store is tried as an attacker with it alone would: every
/// address of the clients' /16 and a set of passcodes holding the real one,
/// under the old unkeyed construction and under today's with every value
/// the store holds taken for the salt and for the key. Nothing is found.
/// The same search with the records key (derived from the router's signing
/// key, which is not in the store) finds every client and the passcode:
/// the search itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copied_store_reveals_no_address_or_passcode() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let mut last = None;
    for ip in CLIENTS {
        last = Some(join_from(&router, &id, &passcode, ip).await.unwrap());
    }
    assert_eq!(
        kick(&router, &conf, &last.unwrap().participant_id, true).await,
        200
    );
    c.stop_router("de-fra-router").await;
    let me = c.policy.router("de-fra-router").unwrap().clone();
    let stolen = steal(me.store.sqlite().unwrap());
    assert!(stolen.address_hashes.len() >= CLIENTS.len());
    assert_eq!(stolen.passcodes.len(), 1);

    // The store alone: every 32-byte value in it (and none) as salt and as key.
    let mut salts = stolen.meta.clone();
    salts.push([0; 32]);
    let mut keys: Vec<Option<RecordsKey>> = vec![None];
    keys.extend(stolen.meta.iter().map(|k| Some(RecordsKey::from_bytes(*k))));
    let candidates: Vec<([u8; 32], Option<RecordsKey>)> = salts
        .iter()
        .flat_map(|s| keys.iter().map(move |k| (*s, k.clone())))
        .collect();
    assert!(
        addresses_found(&stolen, &candidates).is_empty(),
        "the store alone gave client addresses away"
    );
    let mut tried: Vec<String> = (0..2_000).map(|_| random_passcode()).collect();
    tried.push(passcode.clone());
    assert!(
        passcodes_found(&stolen, &tried, &keys).is_empty(),
        "the store alone confirmed a passcode"
    );

    // With the records key, the same search finds them all.
    let seed = std::fs::read_to_string(&me.signing_key).unwrap();
    let signing = residency_relay::ticket::parse_signing_key(seed.trim()).unwrap();
    let key = RecordsKey::derived_from_signing_key(&signing.to_bytes());
    let with_key: Vec<([u8; 32], Option<RecordsKey>)> = stolen
        .meta
        .iter()
        .map(|s| (*s, Some(key.clone())))
        .collect();
    let clients: HashSet<Ipv4Addr> = CLIENTS.iter().map(|ip| ip.parse().unwrap()).collect();
    assert_eq!(addresses_found(&stolen, &with_key), clients);
    assert_eq!(
        passcodes_found(&stolen, &tried, &[Some(key)]),
        HashSet::from([passcode])
    );
    c.shutdown().await;
}

/// Points router `de-fra-router` at `records_key` (and the previous keys)
/// in the cluster's config and loads it again.
fn set_keys(c: &mut Cluster, current: &Path, previous: &[&Path]) {
    let text = std::fs::read_to_string(&c.config).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("records_key"))
        .collect();
    let mut text = kept.join("\n");
    let previous: Vec<String> = previous
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    text = text.replacen(
        "store = \"data/de-fra-router.sqlite\"",
        &format!(
            "store = \"data/de-fra-router.sqlite\"\nrecords_key = \"{}\"\nrecords_key_previous = [{}]",
            current.display(),
            previous.join(", ")
        ),
        1,
    );
    std::fs::write(&c.config, text).unwrap();
    c.policy = Arc::new(residency_relay::policy::load(&c.config).unwrap());
}

async fn restart(c: &mut Cluster) {
    c.stop_router("de-fra-router").await;
    c.start_router("de-fra-router").await;
    c.wait_health("de-fra-router", &["de-fra-1"], "healthy")
        .await;
}

/// A rotation: with the old key listed as previous, bans and passcodes made
/// under it hold and new ones use the new key; once the old key is no
/// longer listed, what was made under it no longer matches (as
/// docs/deployment.md says), and what was made under the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_records_key_keeps_bans_and_passcodes_while_the_old_one_is_listed() {
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (keys.path().join("a.key"), keys.path().join("b.key"));
    std::fs::write(&a, format!("{}\n", hex::encode([41u8; 32]))).unwrap();
    std::fs::write(&b, format!("{}\n", hex::encode([42u8; 32]))).unwrap();
    let mut c = Cluster::new(|t| t);
    set_keys(&mut c, &a, &[]);
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let old = open_conference(&router, "eu").await;
    let (old_id, old_code) = (
        old["id"].as_str().unwrap().to_owned(),
        old["passcode"].as_str().unwrap().to_owned(),
    );
    let banned = join_from(&router, &old_id, &old_code, "127.0.0.6")
        .await
        .unwrap();
    assert_eq!(kick(&router, &old, &banned.participant_id, true).await, 200);

    set_keys(&mut c, &b, &[&a]);
    restart(&mut c).await;
    let e = join_from(&router, &old_id, &old_code, "127.0.0.6")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (403, "banned".into()));
    join_from(&router, &old_id, &old_code, "127.0.0.2")
        .await
        .unwrap();
    let new = open_conference(&router, "eu").await;
    let (new_id, new_code) = (
        new["id"].as_str().unwrap().to_owned(),
        new["passcode"].as_str().unwrap().to_owned(),
    );
    let banned = join_from(&router, &new_id, &new_code, "127.0.0.5")
        .await
        .unwrap();
    assert_eq!(kick(&router, &new, &banned.participant_id, true).await, 200);

    // The old key dropped: what it made lapses, what the new one made holds.
    set_keys(&mut c, &b, &[]);
    restart(&mut c).await;
    let e = join_from(&router, &old_id, &old_code, "127.0.0.2")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (403, "wrong_passcode".into()));
    let e = join_from(&router, &new_id, &new_code, "127.0.0.5")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (403, "banned".into()));
    join_from(&router, &new_id, &new_code, "127.0.0.3")
        .await
        .unwrap();
    c.shutdown().await;
}
