//! Failed-join limits: too many wrong passcodes or invitations from one
//! address, or against one conference, within a window gets `429` with
//! `Retry-After` until the window ends.
//!
//! Fixed windows keyed by address and by conference, in memory; the tables
//! are bounded (oldest windows are dropped first when full), so a flood of
//! distinct addresses cannot grow them without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub window: Duration,
    /// Failures one address may have per window.
    pub per_address: u32,
    /// Failures one conference may see per window, from everyone.
    pub per_conference: u32,
    /// Entries kept per table.
    pub max_entries: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            window: Duration::from_secs(60),
            per_address: 5,
            per_conference: 20,
            max_entries: 100_000,
        }
    }
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Address { retry_after: Duration },
    Conference { retry_after: Duration },
}

impl Limited {
    pub fn retry_after(self) -> Duration {
        match self {
            Limited::Address { retry_after } | Limited::Conference { retry_after } => retry_after,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Limited::Address { .. } => "too_many_failures_from_address",
            Limited::Conference { .. } => "too_many_failures_on_conference",
        }
    }
}

#[derive(Debug)]
struct Windows<K> {
    entries: HashMap<K, (Instant, u32)>,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    fn count(&self, key: &K, now: Instant, window: Duration) -> (u32, Duration) {
        match self.entries.get(key) {
            Some((start, n)) if now.duration_since(*start) < window => {
                (*n, window - now.duration_since(*start))
            }
            _ => (0, Duration::ZERO),
        }
    }

    fn add(&mut self, key: K, now: Instant, settings: &LimitSettings) {
        if self.entries.len() >= settings.max_entries && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (start, _)| now.duration_since(*start) < settings.window);
            if self.entries.len() >= settings.max_entries {
                // Still full of live windows: forget the oldest.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let e = self.entries.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= settings.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// The failure counters.
#[derive(Debug)]
pub struct Limiter {
    settings: LimitSettings,
    inner: Mutex<(Windows<IpAddr>, Windows<String>)>,
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Self {
        Limiter {
            settings,
            inner: Mutex::new((
                Windows {
                    entries: HashMap::new(),
                },
                Windows {
                    entries: HashMap::new(),
                },
            )),
        }
    }

    /// Whether a join attempt may go ahead (checked before the passcode).
    pub fn check(&self, ip: IpAddr, conference: &str, now: Instant) -> Result<(), Limited> {
        let Ok(guard) = self.inner.lock() else {
            return Ok(());
        };
        let (addresses, conferences) = &*guard;
        let s = &self.settings;
        let (n, left) = addresses.count(&ip, now, s.window);
        if n >= s.per_address {
            return Err(Limited::Address { retry_after: left });
        }
        let (n, left) = conferences.count(&conference.to_owned(), now, s.window);
        if n >= s.per_conference {
            return Err(Limited::Conference { retry_after: left });
        }
        Ok(())
    }

    /// Counts a failed attempt.
    pub fn failed(&self, ip: IpAddr, conference: &str, now: Instant) {
        if let Ok(mut guard) = self.inner.lock() {
            let (addresses, conferences) = &mut *guard;
            addresses.add(ip, now, &self.settings);
            conferences.add(conference.to_owned(), now, &self.settings);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_for_the_rest_of_its_window() {
        let l = Limiter::new(LimitSettings {
            per_address: 2,
            per_conference: 10,
            ..LimitSettings::default()
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        l.failed(ip, "eu-a", t0);
        assert!(l.check(ip, "eu-a", t0).is_ok());
        l.failed(ip, "eu-a", t0);
        let hit = l
            .check(ip, "eu-b", t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(hit.code(), "too_many_failures_from_address");
        assert_eq!(hit.retry_after(), Duration::from_secs(50));
        assert!(l.check(other, "eu-a", t0).is_ok());
        assert!(l.check(ip, "eu-a", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_conference_is_limited_across_addresses() {
        let l = Limiter::new(LimitSettings {
            per_address: 100,
            per_conference: 3,
            ..LimitSettings::default()
        });
        let t0 = Instant::now();
        for i in 0..3u8 {
            l.failed(IpAddr::from([192, 0, 2, i]), "eu-a", t0);
        }
        let hit = l
            .check(IpAddr::from([192, 0, 2, 99]), "eu-a", t0)
            .unwrap_err();
        assert_eq!(hit.code(), "too_many_failures_on_conference");
        assert!(l.check(IpAddr::from([192, 0, 2, 99]), "eu-b", t0).is_ok());
    }

    #[test]
    fn tables_stay_bounded() {
        let l = Limiter::new(LimitSettings {
            max_entries: 8,
            ..LimitSettings::default()
        });
        let t0 = Instant::now();
        for i in 0..100u8 {
            l.failed(IpAddr::from([10, 0, 0, i]), "eu-a", t0);
        }
        assert!(l.inner.lock().unwrap().0.entries.len() <= 8);
    }
}
