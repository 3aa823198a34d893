//! Headless Chromium driven through `tests/browser/driver.mjs`
//! (playwright-core from `package.json`, Debian's `chromium`).

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Reaped;

pub struct Browser {
    _child: Reaped,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    next: u64,
    pub version: String,
}

/// Whether browser tests must run (CI sets `RR_REQUIRE_BROWSER=1`).
fn required() -> bool {
    std::env::var("RR_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Which browser a driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Debian's Chromium through playwright-core (`driver.mjs`).
    Chromium,
    /// Debian's Firefox ESR through puppeteer-core over WebDriver BiDi
    /// (`driver-firefox.mjs`), playing into a private PulseAudio sink.
    Firefox,
    /// WebKitGTK's MiniBrowser through WebKitWebDriver under its own Xvfb
    /// (`driver-webkit.mjs`).
    WebKit,
}

impl Kind {
    fn driver(self) -> &'static str {
        match self {
            Kind::Chromium => "tests/browser/driver.mjs",
            Kind::Firefox => "tests/browser/driver-firefox.mjs",
            Kind::WebKit => "tests/browser/driver-webkit.mjs",
        }
    }

    /// What this machine lacks to run it, in words.
    fn missing(self, repo: &std::path::Path) -> Option<String> {
        let file =
            |env: &str, default: &str| std::env::var(env).unwrap_or_else(|_| default.to_owned());
        let needs: Vec<(String, &str)> = match self {
            Kind::Chromium => vec![
                (
                    file("CHROMIUM", "/usr/bin/chromium"),
                    "apt-get install chromium",
                ),
                (
                    repo.join("node_modules/playwright-core")
                        .display()
                        .to_string(),
                    "run npm ci",
                ),
            ],
            Kind::Firefox => vec![
                (
                    file("FIREFOX", "/usr/bin/firefox-esr"),
                    "apt-get install firefox-esr",
                ),
                (
                    "/usr/bin/pulseaudio".to_owned(),
                    "apt-get install pulseaudio",
                ),
                (
                    repo.join("node_modules/puppeteer-core")
                        .display()
                        .to_string(),
                    "run npm ci",
                ),
            ],
            Kind::WebKit => vec![
                (
                    "/usr/bin/WebKitWebDriver".to_owned(),
                    "apt-get install webkit2gtk-driver",
                ),
                (
                    file(
                        "MINIBROWSER",
                        "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser",
                    ),
                    "apt-get install libwebkit2gtk-4.1-0",
                ),
                ("/usr/bin/Xvfb".to_owned(), "apt-get install xvfb"),
            ],
        };
        needs
            .into_iter()
            .find(|(path, _)| !std::path::Path::new(path).exists())
            .map(|(path, fix)| format!("no {path} ({fix})"))
    }
}

impl Browser {
    /// Starts Chromium, or `None` (loudly) when this machine has no
    /// Chromium or no `npm ci` was run; in CI that is a failure.
    pub fn launch() -> Option<Browser> {
        Self::launch_kind(Kind::Chromium)
    }

    /// Starts the browser `kind`, or `None` (loudly) when this machine
    /// lacks it; in CI that is a failure.
    pub fn launch_kind(kind: Kind) -> Option<Browser> {
        Self::launch_in(kind, None)
    }

    /// Starts the browser `kind` inside network namespace `netns` when
    /// given (`ip netns exec`), or `None` (loudly) when this machine lacks
    /// it; in CI that is a failure.
    pub fn launch_in(kind: Kind, netns: Option<&str>) -> Option<Browser> {
        let repo = super::repo();
        if let Some(why) = kind.missing(&repo) {
            assert!(!required(), "browser tests are required here: {why}");
            eprintln!("\n*** SKIPPING BROWSER TEST: {why} ***\n");
            return None;
        }
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"]);
                c
            }
            None => Command::new("node"),
        };
        let mut child = command
            .arg(repo.join(kind.driver()))
            .current_dir(&repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the driver starts its browser");
        let ready: Value = serde_json::from_str(&first).expect("driver speaks JSON");
        assert_eq!(ready["ready"], true, "{first}");
        Some(Browser {
            _child: Reaped(child),
            stdin,
            lines,
            next: 0,
            version: ready["version"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The driver's process: the browser's processes descend from it.
    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// Runs one driver command; panics with the driver's error.
    pub fn cmd(&mut self, mut command: Value) -> Value {
        self.next += 1;
        command["id"] = json!(self.next);
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no answer to {command}"));
            let answer: Value = serde_json::from_str(&line).unwrap();
            if answer["id"] != json!(self.next) {
                continue;
            }
            if let Some(e) = answer.get("error") {
                panic!("{command}: {e}\nbrowser log: {:#}", self.log());
            }
            return answer["value"].clone();
        }
    }

    pub fn log(&mut self) -> Value {
        self.next += 1;
        let id = self.next;
        writeln!(self.stdin, "{}", json!({"id": id, "op": "log"})).unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            let answer: Value = serde_json::from_str(&line).unwrap_or_default();
            if answer["id"] == json!(id) {
                return answer["value"].clone();
            }
        }
        Value::Null
    }

    /// Opens `url` in a new context named `page`, with extra request
    /// headers (e.g. `X-Forwarded-For`) when given.
    pub fn open(&mut self, page: &str, url: &str, headers: Option<Value>) {
        self.cmd(json!({"op": "open", "page": page, "url": url, "headers": headers}));
    }

    pub fn eval(&mut self, page: &str, js: &str) -> Value {
        self.cmd(json!({"op": "eval", "page": page, "js": js}))
    }

    pub fn click(&mut self, page: &str, selector: &str) {
        self.cmd(json!({"op": "click", "page": page, "selector": selector}));
    }

    pub fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.cmd(json!({"op": "fill", "page": page, "selector": selector, "value": value}));
    }

    /// The page's `window.rr.snapshot()`.
    pub fn snapshot(&mut self, page: &str) -> Value {
        self.eval(page, "window.rr.snapshot()")
    }

    /// Opens `url` as `page`, types `name` and presses join.
    pub fn join(&mut self, page: &str, url: &str, name: &str, headers: Option<Value>) {
        self.open(page, url, headers);
        self.fill(page, "#display-name", name);
        self.click(page, "#join-button");
    }

    /// Polls the snapshot of `page` until `done` holds, for up to `within`;
    /// panics with the last snapshot and the browser's log.
    pub fn wait_for(
        &mut self,
        page: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.snapshot(page);
            if done(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let mut brief = s.clone();
                brief["sentLog"] = json!(s["sentLog"].as_array().map_or(0, Vec::len));
                brief["latency"] = json!(s["latency"].as_array().map_or(0, Vec::len));
                panic!(
                    "{page}: {what} did not happen within {within:?}\nsnapshot: {brief:#}\nlog: {:#}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn screenshot(&mut self, page: &str, path: &std::path::Path) {
        self.cmd(json!({"op": "screenshot", "page": page, "path": path}));
    }

    pub fn close(&mut self, page: &str) {
        self.cmd(json!({"op": "close", "page": page}));
    }
}

/// Frames of `kind` that `snapshot`'s page decoded from `participant`.
pub fn decoded(snapshot: &Value, participant: &str, kind: &str) -> u64 {
    snapshot["peers"][participant][kind]["decoded"]
        .as_u64()
        .unwrap_or(0)
}

/// Frames of `kind` the page reassembled from `participant`.
pub fn reassembled(snapshot: &Value, participant: &str, kind: &str) -> u64 {
    snapshot["peers"][participant][kind]["frames"]
        .as_u64()
        .unwrap_or(0)
}

/// The runtime a browser test drives its cluster with (the browser itself
/// is driven from the test's thread).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The guest link of conference answer `conf`: its passcode in the fragment.
pub fn link(router: &str, conf: &Value) -> String {
    format!(
        "{router}/j/{}#p={}",
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap()
    )
}

pub fn in_call(s: &Value) -> bool {
    s["phase"] == "in_call"
}

/// A single-use invitation with role host to conference `id`, made by its
/// tenant; the page joins with it as Hana.
pub fn host_invite(rt: &tokio::runtime::Runtime, router: &str, id: &str) -> String {
    let invite = rt.block_on(super::cluster::request(
        "POST",
        &format!("{router}/v1/conferences/{id}/invites"),
        None,
        Some(super::cluster::ACME),
        Some(json!({"display_name": "Hana", "role": "host"})),
    ));
    assert_eq!(invite.status, 201);
    invite.json()["invite"].as_str().unwrap().to_owned()
}
