//! A throwaway PostgreSQL server per test: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package, run as the `postgres` user when the tests
//! run as root, on a temporary directory and a 127.0.0.1 port, `fsync` off.
//! Dropping it stops the server and removes the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running (or stopped) PostgreSQL server of one test.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    running: bool,
}

/// Where Debian's server binaries are (`/usr/lib/postgresql/<version>/bin`,
/// the newest), or `None` when the package is not installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn as_root() -> bool {
    // The effective uid, from `id -u`.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when running as root (the
/// server refuses to run as root).
fn run(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Pg {
    /// Starts a new server, or `None` (with a note on stderr) when
    /// PostgreSQL is not installed and `RR_REQUIRE_POSTGRES` is unset; with
    /// it set (as in CI), a missing server fails the test.
    pub fn start() -> Option<Pg> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("RR_REQUIRE_POSTGRES").is_none(),
                "RR_REQUIRE_POSTGRES is set but PostgreSQL is not installed (apt-get install postgresql)"
            );
            eprintln!("PostgreSQL is not installed: skipping (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("rr-pg-")
            .tempdir()
            .expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the server's directory failed");
        }
        let out = run(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "rr",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Pg {
            dir,
            bin,
            port: 0,
            running: false,
        };
        // A port another test took meanwhile fails the start: try others.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                pg.create_database("rr");
                return Some(pg);
            }
        }
        panic!("PostgreSQL did not start:\n{}", pg.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_start(&mut self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        self.running = out.status.success();
        self.running
    }

    /// Starts the server again on the same port after [`Pg::stop`].
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again:\n{}",
            self.log()
        );
    }

    /// Stops the server (`fast`: sessions are disconnected).
    pub fn stop(&mut self) {
        let out = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Serves TLS with `cert` and `key` (PEM) from now on: writes them into
    /// the data directory, turns `ssl` on and restarts the server.
    pub fn serve_tls(&mut self, cert: &str, key: &str) {
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if as_root() {
            for f in ["server.crt", "server.key"] {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(f))
                    .status()
                    .unwrap();
                assert!(status.success(), "chown of {f} failed");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        self.stop();
        self.restart();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connection URL for database `db` (no password: trust auth).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://rr@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) {
        let out = run(
            &self.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "rr",
                name,
            ],
        );
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sql` with psql on database `db` and returns its unaligned,
    /// tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(
            &self.bin.join("psql"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "rr",
                "-d",
                db,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = run(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data().to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
