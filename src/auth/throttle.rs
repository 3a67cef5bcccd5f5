//! Abuse limits: failed authentications slowed per client address and name, and a request rate
//! per credential (`governor`'s GCRA). Both are per instance, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Pairs of address and name remembered at most; past it, windows that ended are dropped first.
const MAX_TRACKED_PAIRS: usize = 100_000;

/// The limits, from `[limits]` and `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Requests per second per credential, sustained; `None` for no limit.
    pub requests_per_sec: Option<NonZeroU32>,
    /// Requests a credential may make at once above the sustained rate.
    pub burst: NonZeroU32,
    /// Failed authentications of one name from one address allowed per window; `None` for no
    /// limit.
    pub max_failures: Option<NonZeroU32>,
    pub failure_window: Duration,
    /// Live tails one credential may hold open at once; `None` for no limit.
    pub max_streams: Option<NonZeroU32>,
}

/// Failures of one (address, name) pair in the window that began at `since`.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// The state of both limits.
pub struct Throttle {
    settings: ThrottleSettings,
    failures: Mutex<HashMap<(Option<IpAddr>, String), Failures>>,
    /// How many pairs `failures` holds, read without its lock: on the path of every request,
    /// which almost never follows a failure.
    tracked: AtomicUsize,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    /// Live tails open, by credential.
    streams: Mutex<HashMap<String, u32>>,
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Self {
        let rate = settings.requests_per_sec.map(|per_second| {
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(settings.burst))
        });
        Self {
            settings,
            failures: Mutex::default(),
            tracked: AtomicUsize::new(0),
            rate,
            streams: Mutex::default(),
        }
    }

    /// A place for one more live tail of `credential`, held until the slot is dropped;
    /// `Err(open)` when it already holds `max_streams`. Each open stream costs the server a
    /// task and a page of events, and a reader that stops reading keeps it until the socket
    /// times out: one credential must not take them all.
    pub fn open_stream(self: &Arc<Self>, credential: &str) -> Result<StreamSlot, u32> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let open = streams.entry(credential.to_owned()).or_default();
        if let Some(max) = self.settings.max_streams
            && *open >= max.get()
        {
            return Err(*open);
        }
        *open += 1;
        Ok(StreamSlot {
            throttle: Arc::clone(self),
            credential: credential.to_owned(),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(Option<IpAddr>, String), Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` while `name` from `address` has failed `max_failures` times in the current
    /// window: it may not even try until the window ends. Another name from that address, or
    /// the name from another address, is not held back, so an attacker cannot lock a user out.
    pub fn may_try(&self, address: Option<IpAddr>, name: &str) -> Result<(), Duration> {
        let Some(max) = self.settings.max_failures else {
            return Ok(());
        };
        if self.tracked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let key = (address, name.to_owned());
        match self.failures().get(&key) {
            Some(failed) if failed.count >= max.get() => {
                let ends = failed.since + self.settings.failure_window;
                match ends.checked_duration_since(Instant::now()) {
                    Some(wait) if !wait.is_zero() => Err(wait),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication of `name` from `address`.
    pub fn failed(&self, address: Option<IpAddr>, name: &str) {
        if self.settings.max_failures.is_none() {
            return;
        }
        let now = Instant::now();
        let window = self.settings.failure_window;
        let mut failures = self.failures();
        if failures.len() >= MAX_TRACKED_PAIRS {
            failures.retain(|_, failed| now.duration_since(failed.since) < window);
        }
        let entry = failures
            .entry((address, name.to_owned()))
            .or_insert(Failures {
                since: now,
                count: 0,
            });
        if now.duration_since(entry.since) >= window {
            *entry = Failures {
                since: now,
                count: 0,
            };
        }
        entry.count = entry.count.saturating_add(1);
        self.tracked.store(failures.len(), Ordering::Release);
    }

    /// Forgets the failures of `name` from `address` once it authenticated.
    pub fn succeeded(&self, address: Option<IpAddr>, name: &str) {
        if self.settings.max_failures.is_some() && self.tracked.load(Ordering::Acquire) > 0 {
            let mut failures = self.failures();
            failures.remove(&(address, name.to_owned()));
            self.tracked.store(failures.len(), Ordering::Release);
        }
    }

    /// `Err(wait)` when the credential named `credential` is over its request rate.
    pub fn admit(&self, credential: &str) -> Result<(), Duration> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if rate.len() >= MAX_TRACKED_PAIRS {
            rate.retain_recent();
        }
        rate.check_key(&credential.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// One open live tail of a credential; dropping it frees the place.
pub struct StreamSlot {
    throttle: Arc<Throttle>,
    credential: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self
            .throttle
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = streams.get_mut(&self.credential) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.credential);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_failures: u32, window: Duration) -> ThrottleSettings {
        ThrottleSettings {
            requests_per_sec: NonZeroU32::new(2),
            burst: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            max_failures: NonZeroU32::new(max_failures),
            failure_window: window,
            max_streams: NonZeroU32::new(2),
        }
    }

    #[test]
    fn a_credential_holds_at_most_its_streams_and_a_closed_one_frees_its_place() {
        let throttle = Arc::new(Throttle::new(settings(3, Duration::from_secs(60))));
        let first = throttle.open_stream("svc").unwrap();
        let _second = throttle.open_stream("svc").unwrap();
        assert_eq!(throttle.open_stream("svc").err(), Some(2));
        assert!(throttle.open_stream("other").is_ok(), "per credential");
        drop(first);
        assert!(throttle.open_stream("svc").is_ok());
    }

    #[test]
    fn a_pair_is_held_back_after_its_failures_and_others_are_not() {
        let throttle = Throttle::new(settings(3, Duration::from_secs(60)));
        let here = Some(IpAddr::from([192, 0, 2, 1]));
        let there = Some(IpAddr::from([192, 0, 2, 2]));
        for _ in 0..3 {
            assert!(throttle.may_try(here, "alice").is_ok());
            throttle.failed(here, "alice");
        }
        let wait = throttle.may_try(here, "alice").unwrap_err();
        assert!(wait > Duration::from_secs(50));
        assert!(throttle.may_try(there, "alice").is_ok(), "another address");
        assert!(throttle.may_try(here, "bob").is_ok(), "another name");
    }

    #[test]
    fn the_window_ends_and_a_success_clears_it() {
        let throttle = Throttle::new(settings(1, Duration::from_millis(30)));
        throttle.failed(None, "alice");
        assert!(throttle.may_try(None, "alice").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(throttle.may_try(None, "alice").is_ok());
        throttle.failed(None, "alice");
        throttle.succeeded(None, "alice");
        assert!(throttle.may_try(None, "alice").is_ok());
    }

    #[test]
    fn a_credential_over_its_rate_waits_and_others_do_not() {
        let throttle = Throttle::new(settings(10, Duration::from_secs(60)));
        assert!(throttle.admit("a").is_ok());
        assert!(throttle.admit("a").is_ok());
        let wait = throttle.admit("a").unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(throttle.admit("b").is_ok());
    }
}
