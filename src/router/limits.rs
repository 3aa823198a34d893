//! Failed-join limits: too many wrong passcodes or invitations from one
//! address, or against one conference, within a window gets `429` with
//! `Retry-After` until the window ends.
//!
//! Fixed windows keyed by address and by conference, in memory; the tables
//! are bounded (oldest windows are dropped first when full), so a flood of
//! distinct addresses cannot grow them without limit.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http_server::address_group;

/// Limits of the failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub window: Duration,
    /// Failures one address may have per window.
    pub per_address: u32,
    /// Failures one conference may see per window, from everyone.
    pub per_conference: u32,
    /// Join attempts (failed or not) one address may make per window.
    pub attempts_per_address: u32,
    /// Entries kept per table.
    pub max_entries: usize,
}

impl LimitSettings {
    /// The policy's `[limits]`, with the usual one-minute window.
    pub fn from_policy(policy: &crate::policy::Policy) -> Self {
        let l = policy.limits();
        LimitSettings {
            per_address: l.failed_joins_per_address,
            per_conference: l.failed_joins_per_conference,
            attempts_per_address: l.joins_per_address_per_minute,
            ..LimitSettings::default()
        }
    }

    /// This replica's share when `replicas` routers serve the same
    /// jurisdictions: each limit divided among them, rounded down (at least
    /// 1), so what one client can do over all replicas together never
    /// exceeds the configured limit. Limits are kept per replica, not in the
    /// shared store, because they must hold when the store is slow or down,
    /// and a flood is when it is; a client a load balancer keeps on one
    /// replica gets that replica's share.
    pub fn shared_by(self, replicas: usize) -> Self {
        let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
        let share = |limit: u32| (limit / n).max(1);
        LimitSettings {
            per_address: share(self.per_address),
            per_conference: share(self.per_conference),
            attempts_per_address: share(self.attempts_per_address),
            ..self
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            window: Duration::from_secs(60),
            per_address: 5,
            per_conference: 20,
            attempts_per_address: 120,
            max_entries: 100_000,
        }
    }
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Address {
        retry_after: Duration,
    },
    Conference {
        retry_after: Duration,
    },
    /// Too many joins, failed or not, from one address.
    Attempts {
        retry_after: Duration,
    },
}

impl Limited {
    pub fn retry_after(self) -> Duration {
        match self {
            Limited::Address { retry_after }
            | Limited::Conference { retry_after }
            | Limited::Attempts { retry_after } => retry_after,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Limited::Address { .. } => "too_many_failures_from_address",
            Limited::Conference { .. } => "too_many_failures_on_conference",
            Limited::Attempts { .. } => "too_many_joins_from_address",
        }
    }
}

#[derive(Debug)]
struct Windows<K> {
    entries: HashMap<K, (Instant, u32)>,
    /// Window starts in the order they began, for evicting the oldest in
    /// O(1); an entry whose window restarted since is skipped.
    order: VecDeque<(Instant, K)>,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    fn new() -> Self {
        Windows {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn count(&self, key: &K, now: Instant, window: Duration) -> (u32, Duration) {
        match self.entries.get(key) {
            Some((start, n)) if now.duration_since(*start) < window => {
                (*n, window - now.duration_since(*start))
            }
            _ => (0, Duration::ZERO),
        }
    }

    fn add(&mut self, key: K, now: Instant, settings: &LimitSettings) {
        let live = self
            .entries
            .get(&key)
            .is_some_and(|(start, _)| now.duration_since(*start) < settings.window);
        if !live {
            while self.entries.len() >= settings.max_entries && !self.entries.contains_key(&key) {
                // Evict the oldest window (expired ones first, by construction).
                let Some((start, old)) = self.order.pop_front() else {
                    break;
                };
                if self.entries.get(&old).is_some_and(|(s, _)| *s == start) {
                    self.entries.remove(&old);
                }
            }
            self.entries.insert(key.clone(), (now, 0));
            self.order.push_back((now, key.clone()));
            if self.order.len() > 2 * settings.max_entries.max(1) {
                // Drop entries of windows that restarted since.
                let entries = &self.entries;
                self.order
                    .retain(|(start, k)| entries.get(k).is_some_and(|(s, _)| s == start));
            }
        }
        if let Some(e) = self.entries.get_mut(&key) {
            e.1 = e.1.saturating_add(1);
        }
    }

    fn refund(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

/// The counters' tables.
#[derive(Debug)]
struct Tables {
    failures: Windows<IpAddr>,
    conferences: Windows<String>,
    attempts: Windows<IpAddr>,
    /// In force now (a policy reload replaces them).
    settings: LimitSettings,
}

/// The failure and attempt counters.
#[derive(Debug)]
pub struct Limiter {
    inner: Mutex<Tables>,
}

/// Counts an attempt as a failure until [`Attempt::succeeded`] refunds it,
/// so concurrent guesses cannot all slip past the check.
#[derive(Debug)]
#[must_use]
pub struct Attempt<'a> {
    limiter: &'a Limiter,
    ip: IpAddr,
    conference: Option<String>,
}

impl Attempt<'_> {
    /// The credential was right: the attempt is not a failure.
    pub fn succeeded(self) {
        if let Ok(mut guard) = self.limiter.inner.lock() {
            guard.failures.refund(&address_group(self.ip));
            if let Some(c) = &self.conference {
                guard.conferences.refund(c);
            }
        }
    }
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Self {
        Limiter {
            inner: Mutex::new(Tables {
                failures: Windows::new(),
                conferences: Windows::new(),
                attempts: Windows::new(),
                settings,
            }),
        }
    }

    /// Puts `settings` in force; the counts so far stay.
    pub fn set(&self, settings: LimitSettings) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.settings = settings;
    }

    /// Checks the limits and counts the attempt as a failure in the same
    /// step. `per_conference` is false for invitations, which cannot be
    /// guessed, so guessing passcodes cannot lock invited people out.
    pub fn begin(
        &self,
        ip: IpAddr,
        conference: &str,
        per_conference: bool,
        now: Instant,
    ) -> Result<Attempt<'_>, Limited> {
        let Ok(mut guard) = self.inner.lock() else {
            return Ok(Attempt {
                limiter: self,
                ip,
                conference: None,
            });
        };
        let Tables {
            failures: addresses,
            conferences,
            attempts,
            settings,
        } = &mut *guard;
        let s = &*settings;
        let key = address_group(ip);
        let (n, left) = attempts.count(&key, now, s.window);
        if n >= s.attempts_per_address {
            return Err(Limited::Attempts { retry_after: left });
        }
        let (n, left) = addresses.count(&key, now, s.window);
        if n >= s.per_address {
            return Err(Limited::Address { retry_after: left });
        }
        attempts.add(key, now, s);
        let conference = per_conference.then(|| conference.to_owned());
        if let Some(c) = &conference {
            let (n, left) = conferences.count(c, now, s.window);
            if n >= s.per_conference {
                return Err(Limited::Conference { retry_after: left });
            }
            conferences.add(c.clone(), now, s);
        }
        addresses.add(key, now, s);
        Ok(Attempt {
            limiter: self,
            ip,
            conference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(l: &Limiter, ip: IpAddr, conference: &str, now: Instant) -> Result<(), Limited> {
        // Begun and never refunded: a failure.
        l.begin(ip, conference, true, now).map(|_| ())
    }

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
        fail(&l, ip, "eu-a", t0).unwrap();
        fail(&l, ip, "eu-a", t0).unwrap();
        let hit = l
            .begin(ip, "eu-b", true, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(hit.code(), "too_many_failures_from_address");
        assert_eq!(hit.retry_after(), Duration::from_secs(50));
        assert!(l.begin(other, "eu-a", true, t0).is_ok());
        assert!(
            l.begin(ip, "eu-a", true, t0 + Duration::from_secs(60))
                .is_ok()
        );
    }

    #[test]
    fn successes_are_refunded_and_concurrent_attempts_count() {
        let l = Limiter::new(LimitSettings {
            per_address: 2,
            ..LimitSettings::default()
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            l.begin(ip, "eu-a", true, t0).unwrap().succeeded();
        }
        // Two attempts in flight at once use up the allowance before
        // either has been judged.
        let a = l.begin(ip, "eu-a", true, t0).unwrap();
        let b = l.begin(ip, "eu-a", true, t0).unwrap();
        assert!(l.begin(ip, "eu-a", true, t0).is_err());
        a.succeeded();
        drop(b);
        assert!(l.begin(ip, "eu-a", true, t0).is_ok());
    }

    #[test]
    fn a_conference_is_limited_across_addresses_but_not_for_invitations() {
        let l = Limiter::new(LimitSettings {
            per_address: 100,
            per_conference: 3,
            ..LimitSettings::default()
        });
        let t0 = Instant::now();
        for i in 0..3u8 {
            fail(&l, IpAddr::from([192, 0, 2, i]), "eu-a", t0).unwrap();
        }
        let hit = l
            .begin(IpAddr::from([192, 0, 2, 99]), "eu-a", true, t0)
            .unwrap_err();
        assert_eq!(hit.code(), "too_many_failures_on_conference");
        assert!(
            l.begin(IpAddr::from([192, 0, 2, 99]), "eu-b", true, t0)
                .is_ok()
        );
        assert!(
            l.begin(IpAddr::from([192, 0, 2, 99]), "eu-a", false, t0)
                .is_ok()
        );
    }

    #[test]
    fn joins_from_one_address_are_limited_even_when_they_succeed() {
        let l = Limiter::new(LimitSettings {
            attempts_per_address: 3,
            ..LimitSettings::default()
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.begin(ip, "eu-a", true, t0).unwrap().succeeded();
        }
        let hit = l.begin(ip, "eu-a", true, t0).unwrap_err();
        assert_eq!(hit.code(), "too_many_joins_from_address");
        assert!(
            l.begin("192.0.2.8".parse().unwrap(), "eu-a", true, t0)
                .is_ok()
        );
    }

    #[test]
    fn addresses_are_keyed_by_their_64_and_mapped_ones_as_ipv4() {
        let key = |s: &str| address_group(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let l = Limiter::new(LimitSettings {
            per_address: 2,
            ..LimitSettings::default()
        });
        let t0 = Instant::now();
        fail(&l, "2001:db8:1:2::1".parse().unwrap(), "eu-a", t0).unwrap();
        fail(&l, "2001:db8:1:2::ffff".parse().unwrap(), "eu-a", t0).unwrap();
        assert!(fail(&l, "2001:db8:1:2:abcd::9".parse().unwrap(), "eu-a", t0).is_err());
        assert!(fail(&l, "2001:db8:1:3::1".parse().unwrap(), "eu-a", t0).is_ok());
    }

    #[test]
    fn tables_stay_bounded_and_evict_the_oldest() {
        let l = Limiter::new(LimitSettings {
            max_entries: 8,
            per_conference: u32::MAX,
            ..LimitSettings::default()
        });
        let t0 = Instant::now();
        for i in 0..100u8 {
            let _ = fail(
                &l,
                IpAddr::from([10, 0, 0, i]),
                "eu-a",
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        let guard = l.inner.lock().unwrap();
        assert!(guard.failures.entries.len() <= 8);
        assert!(guard.failures.order.len() <= 16);
        // The newest survived.
        assert!(
            guard
                .failures
                .entries
                .contains_key(&IpAddr::from([10, 0, 0, 99]))
        );
    }
}
