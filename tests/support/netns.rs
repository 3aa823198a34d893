//! A network namespace joined to this one by a veth pair, for a browser or
//! client on a network of its own: UDP blocked, or its downlink limited.
//! Needs root (`ip netns`); deleted when dropped.

#![allow(dead_code)]

use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether this process may make namespaces.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// `10.77.<n>.1` on this side, `10.77.<n>.2` inside, the inside's
/// default route through the pair.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
    /// This side's address, where routers and relays listen for it.
    pub host: String,
    /// The address inside.
    pub inside: String,
    /// This side's end of the pair: what leaves it goes into the
    /// namespace (the inside's downlink).
    outer: String,
}

impl Namespace {
    /// A namespace `tag`-`n` (n from this process's id, so parallel test
    /// binaries do not collide).
    pub fn new(tag: &str, n: u32) -> Result<Namespace, String> {
        let name = format!("rr-{tag}-{n}");
        let (outer, inner) = (format!("rr{tag}{n}h"), format!("rr{tag}{n}n"));
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Namespace {
            name: name.clone(),
            host: format!("10.77.{n}.1"),
            inside: format!("10.77.{n}.2"),
            outer: outer.clone(),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["addr", "add", &format!("10.77.{n}.1/30"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        ns.ip_inside(&["addr", "add", &format!("10.77.{n}.2/30"), "dev", &inner])?;
        ns.ip_inside(&["link", "set", &inner, "up"])?;
        ns.ip_inside(&["link", "set", "lo", "up"])?;
        ns.ip_inside(&["route", "add", "default", "via", &format!("10.77.{n}.1")])?;
        Ok(ns)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip_inside(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Every UDP packet from inside is dropped (policy routing).
    pub fn block_udp(&self) -> Result<(), String> {
        self.ip_inside(&["rule", "add", "ipproto", "udp", "blackhole"])
    }

    /// Limits what reaches the inside to `kbit` kbit/s: an htb class on
    /// this side's end of the pair, matched by the inside's address, whose
    /// queue holds 200 ms of that rate. No segmentation offload above the
    /// MTU, so that the queue sees packets as the wire would.
    pub fn limit_downlink(&self, kbit: u32) -> Result<(), String> {
        let dev = self.outer.as_str();
        ip(&[
            "link",
            "set",
            dev,
            "gso_max_segs",
            "1",
            "gso_max_size",
            "1500",
        ])?;
        let rate = format!("{kbit}kbit");
        let limit = (u64::from(kbit) * 1000 / 8 / 5).to_string();
        run(
            "tc",
            &[
                "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
            ],
        )?;
        run(
            "tc",
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                "10gbit", "quantum", "60000",
            ],
        )?;
        run(
            "tc",
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate",
                &rate, "ceil", &rate,
            ],
        )?;
        run(
            "tc",
            &[
                "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "bfifo", "limit",
                &limit,
            ],
        )?;
        let dst = format!("{}/32", self.inside);
        run(
            "tc",
            &[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", &dst, "flowid", "1:20",
            ],
        )
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A certificate for `host` (and the development router's own names),
/// made with the development router's key under its name: the relays' CA
/// file (the development certificate) vouches for it, and browsers' allow
/// list (by public key) takes it. Written to `path`.
pub fn dev_router_certificate(host: &str, path: &std::path::Path) {
    let key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(super::repo().join("config/dev-router.key")).unwrap(),
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::new(vec![
        host.to_owned(),
        "127.0.2.1".into(),
        "localhost".into(),
    ])
    .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "residency-relay dev router");
    std::fs::write(path, params.self_signed(&key).unwrap().pem()).unwrap();
}

/// The dev config text with router `de-fra-router`'s public listener and
/// relay `de-fra-1` on `host`, serving `cert` (whole lines only: the relay
/// channel stays on loopback).
pub fn on_host(text: String, host: &str, cert: &std::path::Path) -> String {
    let tls_cert = text
        .lines()
        .find(|l| l.starts_with("tls_cert = "))
        .unwrap()
        .to_owned();
    text.replacen(
        &format!("\n{tls_cert}"),
        &format!("\ntls_cert = \"{}\"", cert.display()),
        1,
    )
    .replace("\nlisten = \"127.0.2.1:", &format!("\nlisten = \"{host}:"))
    .replace(
        "\nurl = \"https://127.0.2.1:",
        &format!("\nurl = \"https://{host}:"),
    )
    .replace(
        "quic_addr = \"127.0.1.1:",
        &format!("quic_addr = \"{host}:"),
    )
}

/// A namespace of its own loopback only, shaped like a real link: MTU
/// 1,500 and no segmentation offload (a 64 KiB super-packet would reach
/// a queue whole), an htb root whose default class is unlimited, and a
/// class per address [`Loopback::limit`] names. Relays and clients run
/// inside on `127.0.0.0/8` from a thread [`Loopback::enter`] moves there.
/// Needs root; deleted when dropped.
#[derive(Debug)]
pub struct Loopback {
    pub name: String,
    classes: std::sync::Mutex<Vec<(String, u32)>>,
}

/// Which packets of an address a limit takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Those sent to it: its downlink.
    To,
    /// Those it sends: its uplink.
    From,
}

impl Loopback {
    pub fn new(tag: &str, n: u32) -> Result<Loopback, String> {
        let name = format!("rr-{tag}-{n}");
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let lo = Loopback {
            name,
            classes: std::sync::Mutex::new(Vec::new()),
        };
        lo.ip(&[
            "link",
            "set",
            "lo",
            "up",
            "mtu",
            "1500",
            "gso_max_segs",
            "1",
            "gso_max_size",
            "1500",
        ])?;
        lo.tc(&[
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10",
        ])?;
        lo.tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
            "10gbit", "quantum", "60000",
        ])?;
        Ok(lo)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn tc(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "tc"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Limits `addr`'s packets (`way`) to `kbit` kbit/s, with a queue of
    /// 200 ms of that rate; 0 lifts the limit.
    pub fn limit(&self, way: Way, addr: &str, kbit: u32) -> Result<(), String> {
        let key = format!("{way:?} {addr}");
        let mut classes = self.classes.lock().unwrap();
        let (rate, queue) = if kbit == 0 {
            ("10gbit".to_owned(), "10000000".to_owned())
        } else {
            (
                format!("{kbit}kbit"),
                (u64::from(kbit) * 1000 / 8 / 5).max(3000).to_string(),
            )
        };
        if let Some((_, id)) = classes.iter().find(|(k, _)| *k == key) {
            let class = format!("1:{id}");
            let handle = format!("{id}:");
            self.tc(&[
                "class", "change", "dev", "lo", "parent", "1:", "classid", &class, "htb", "rate",
                &rate, "ceil", &rate,
            ])?;
            return self.tc(&[
                "qdisc", "change", "dev", "lo", "parent", &class, "handle", &handle, "bfifo",
                "limit", &queue,
            ]);
        }
        let id = 20 + classes.len() as u32;
        let (class, handle) = (format!("1:{id}"), format!("{id}:"));
        self.tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", &class, "htb", "rate", &rate,
            "ceil", &rate,
        ])?;
        self.tc(&[
            "qdisc", "add", "dev", "lo", "parent", &class, "handle", &handle, "bfifo", "limit",
            &queue,
        ])?;
        let matched = format!("{addr}/32");
        let field = match way {
            Way::To => "dst",
            Way::From => "src",
        };
        self.tc(&[
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", field, &matched, "flowid", &class,
        ])?;
        classes.push((key, id));
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace; threads it starts (a
    /// tokio runtime's workers) are inside too.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("the namespace's file");
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the namespace");
                f()
            })
            .join()
            .expect("the namespace's thread")
        })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
