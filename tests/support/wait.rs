//! Waiting for what a test can observe, looked at again until it holds,
//! rather than sleeping for a time: on a loaded machine any fixed time is
//! too short some day, and on an idle one every run pays it in full.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How often [`until`] and [`until_blocking`] look again.
pub const EVERY: Duration = Duration::from_millis(25);

/// Long enough for the next reports of relays (one a second each) to
/// reach their router and show, on a loaded machine.
pub const REPORTS: Duration = Duration::from_secs(15);

/// Polls `check` until it answers `Ok`, and returns what it held. After
/// `within`, panics naming `what` and the last `Err` (what was seen instead).
pub async fn until<T, E, F, C>(what: &str, within: Duration, mut check: C) -> T
where
    E: Display,
    F: Future<Output = Result<T, E>>,
    C: FnMut() -> F,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// [`until`] for a test driven from its own thread (the browser tests).
pub fn until_blocking<T, E, C>(what: &str, within: Duration, mut check: C) -> T
where
    E: Display,
    C: FnMut() -> Result<T, E>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check() {
            Ok(done) => return done,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {seen}"
            ),
        }
        std::thread::sleep(EVERY);
    }
}

/// Calls `send` (with a new sequence number each time, from 1,000,000 up,
/// clear of a test's own) until `heard` says what was sent arrived: a
/// subscription, above all one beyond a cascade link, takes effect some
/// time after it was answered. `heard` paces the sending (it waits a
/// little for the media, or pauses before it looks). Panics after 10 s.
pub async fn send_until_heard<S, H, F>(mut send: S, mut heard: H)
where
    S: FnMut(u32),
    H: FnMut() -> F,
    F: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for sequence in 1_000_000u32.. {
        send(sequence);
        if heard().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "media never arrived"
        );
    }
}
