//! Knowing whether the users table may have changed without reading it. Each backend watches
//! for changes made by anyone (this process, another instance, `auditor user` in another
//! process, SQL by hand) and counts them in a generation, so that users kept in memory are
//! trusted for exactly one generation and only while the watcher can vouch for it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StoreError;

/// How long a watcher's confirmation lasts. When it is not renewed in time (the watcher's
/// connection hangs, its polls fail or stall), [`UsersWatch::generation`] vouches for nothing
/// and callers read the table: whatever fails, a change goes unnoticed for at most this long.
pub const LEASE: Duration = Duration::from_secs(1);

/// The generation of the users table as one watcher sees it; clones share it.
#[derive(Debug, Clone)]
pub struct UsersWatch(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    seen: Mutex<Seen>,
    /// Woken at every confirmation.
    confirmed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Seen {
    generation: u64,
    /// Every change committed before this instant is counted in `generation`; `None` while the
    /// watcher cannot say (not yet started, or its connection was lost).
    complete_until: Option<Instant>,
}

impl Default for UsersWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl UsersWatch {
    /// A watch that vouches for nothing until its watcher first confirms it.
    pub fn new() -> Self {
        Self(Arc::new(Shared {
            seen: Mutex::new(Seen {
                generation: 0,
                complete_until: None,
            }),
            confirmed: tokio::sync::Notify::new(),
        }))
    }

    /// Waits until the watcher vouches for a generation, e.g. before serving, so that the first
    /// requests need not read the table.
    pub async fn confirmed(&self) {
        loop {
            let confirmed = self.0.confirmed.notified();
            if self.generation().is_some() {
                return;
            }
            confirmed.await;
        }
    }

    /// The current generation: what was read from the users table after this generation was
    /// seen stays true until it changes. `None` when a change could have gone unseen (the
    /// watcher is not connected, or has not confirmed within [`LEASE`]): read the table then.
    pub fn generation(&self) -> Option<u64> {
        self.generation_at(Instant::now())
    }

    fn generation_at(&self, now: Instant) -> Option<u64> {
        let seen = self.lock();
        let complete_until = seen.complete_until?;
        (now.saturating_duration_since(complete_until) <= LEASE).then_some(seen.generation)
    }

    /// The users may have changed: whatever was read under the current generation is stale.
    pub fn changed(&self) {
        self.lock().generation += 1;
    }

    /// Every change committed before `at` has been counted with [`UsersWatch::changed`].
    pub fn confirm(&self, at: Instant) {
        {
            let mut seen = self.lock();
            seen.complete_until = Some(seen.complete_until.map_or(at, |until| until.max(at)));
        }
        self.0.confirmed.notify_waiters();
    }

    /// The watcher lost track (its connection dropped): vouch for nothing until it confirms
    /// again, and count a change, since one may have been missed meanwhile.
    pub fn lost(&self) {
        let mut seen = self.lock();
        seen.generation += 1;
        seen.complete_until = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The state is two plain fields, consistent after every statement: a poisoned lock
        // holds nothing half-done.
        self.0.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a value the database changes with every change to the users table, every `interval`
/// until `shutdown`, and keeps the returned watch up to date with it. For a backend without
/// push notifications: the interval bounds how late a change is seen.
pub(super) fn poll<F, Fut>(interval: Duration, shutdown: CancellationToken, read: F) -> UsersWatch
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<i64, StoreError>> + Send + 'static,
{
    let watch = UsersWatch::new();
    tokio::spawn(poll_until(interval, shutdown, read, watch.clone()));
    watch
}

async fn poll_until<F, Fut>(
    interval: Duration,
    shutdown: CancellationToken,
    mut read: F,
    watch: UsersWatch,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<i64, StoreError>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // A read that starts after a commit sees it.
        let started = Instant::now();
        match read().await {
            Ok(value) => {
                if last != Some(value) {
                    watch.changed();
                    last = Some(value);
                }
                watch.confirm(started);
                if std::mem::take(&mut failing) {
                    tracing::info!("reading the users generation works again");
                }
            }
            // The lease runs out by itself: authentication reads the table meanwhile.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read the users generation; authenticating from the users table until it works again");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_vouches_for_nothing_until_confirmed() {
        let watch = UsersWatch::new();
        assert_eq!(watch.generation(), None);
        watch.changed();
        assert_eq!(watch.generation(), None);
        watch.confirm(Instant::now());
        assert!(watch.generation().is_some());
    }

    #[tokio::test]
    async fn waiting_for_a_confirmation_ends_at_the_first() {
        let watch = UsersWatch::new();
        let waiting = tokio::spawn({
            let watch = watch.clone();
            async move { watch.confirmed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        watch.confirm(Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        watch.confirmed().await;
    }

    #[test]
    fn a_change_moves_the_generation() {
        let watch = UsersWatch::new();
        watch.confirm(Instant::now());
        let before = watch.generation();
        watch.changed();
        assert_ne!(watch.generation(), before);
        assert!(watch.generation().is_some());
    }

    #[test]
    fn a_confirmation_lasts_only_its_lease() {
        let watch = UsersWatch::new();
        let at = Instant::now();
        watch.confirm(at);
        assert!(watch.generation_at(at + LEASE).is_some());
        assert_eq!(
            watch.generation_at(at + LEASE + Duration::from_millis(1)),
            None
        );
        // An older confirmation arriving late does not shorten a newer one.
        watch.confirm(at + LEASE);
        watch.confirm(at);
        assert!(watch.generation_at(at + LEASE * 2).is_some());
    }

    #[test]
    fn a_lost_watcher_vouches_for_nothing_and_its_old_generation_never_returns() {
        let watch = UsersWatch::new();
        watch.confirm(Instant::now());
        let before = watch.generation();
        watch.lost();
        assert_eq!(watch.generation(), None);
        watch.confirm(Instant::now());
        assert!(watch.generation().is_some());
        assert_ne!(watch.generation(), before);
    }

    /// Waits (up to a second) for `condition` to hold of the watch.
    async fn until(watch: &UsersWatch, condition: impl Fn(&Seen) -> bool) {
        for _ in 0..200 {
            if condition(&watch.lock()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not within a second: {:?}", watch.lock());
    }

    #[tokio::test]
    async fn a_poller_counts_changes_and_confirms_only_what_it_read() {
        let value = Arc::new(Mutex::new(Ok::<i64, ()>(7)));
        let source = Arc::clone(&value);
        let shutdown = CancellationToken::new();
        let interval = Duration::from_millis(10);
        let watch = poll(interval, shutdown.clone(), move || {
            let next = *source.lock().unwrap();
            async move { next.map_err(|()| StoreError::NotFound) }
        });
        until(&watch, |seen| seen.complete_until.is_some()).await;
        let first = watch.lock().generation;

        *value.lock().unwrap() = Ok(8);
        until(&watch, |seen| seen.generation != first).await;
        let second = watch.lock().generation;

        *value.lock().unwrap() = Err(());
        tokio::time::sleep(interval * 3).await;
        let last_read = watch.lock().complete_until;
        tokio::time::sleep(interval * 3).await;
        assert_eq!(
            watch.lock().complete_until,
            last_read,
            "a failed read confirms nothing"
        );

        *value.lock().unwrap() = Ok(8);
        until(&watch, |seen| seen.complete_until > last_read).await;
        assert_eq!(
            watch.lock().generation,
            second,
            "the same value is no change"
        );
        shutdown.cancel();
    }
}
