//! The users, kept in memory for one generation of the users table so that authenticating does
//! not read the table on every request, yet a removed user or a changed role or password takes
//! effect as soon as the store's watch sees the change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::user::UserRecord;
use crate::store::{Store, StoreError, UsersWatch};

type Users = Arc<HashMap<String, UserRecord>>;

enum Lookup {
    /// The users, read under the current generation.
    Cached(Users),
    /// Nothing read under the current generation yet.
    Stale(u64),
    /// Nobody can vouch for a copy now (the watcher is down): read the table every time.
    Unvouched,
}

/// Every user, read whole: there are few, and a name that is not there is then answered without
/// a read too, so an unknown name and a known one take the same path.
pub struct UserCache<S> {
    store: S,
    watch: UsersWatch,
    /// The users as read under one generation.
    current: Mutex<Option<(u64, Users)>>,
    /// Held by the one request that reads all users after a change. The others meanwhile read
    /// their own row rather than wait: were the database slow or down, waiting in line would
    /// add up each one's timeout.
    reading: tokio::sync::Mutex<()>,
}

impl<S: Store> UserCache<S> {
    /// Users of `store`, trusted while `watch` (the store's, from [`Store::watch_users`])
    /// vouches for them.
    pub fn new(store: S, watch: UsersWatch) -> Self {
        Self {
            store,
            watch,
            current: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// The user named `name` as the table holds it now: from memory while the watch's generation
    /// is the one the users were read under, else from the table.
    pub async fn find(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.lookup() {
            Lookup::Cached(users) => return Ok(users.get(name).cloned()),
            Lookup::Unvouched => return self.store.find_user(name).await,
            Lookup::Stale(_) => {}
        }
        let Ok(_reading) = self.reading.try_lock() else {
            return self.store.find_user(name).await;
        };
        // Whoever read before us may have read this very generation.
        let generation = match self.lookup() {
            Lookup::Cached(users) => return Ok(users.get(name).cloned()),
            Lookup::Unvouched => return self.store.find_user(name).await,
            Lookup::Stale(generation) => generation,
        };
        // The generation was taken before this read: a change committed after it moves the
        // generation, so what the read missed is never served.
        let users: HashMap<String, UserRecord> = self
            .store
            .list_users()
            .await?
            .into_iter()
            .map(|user| (user.name.clone(), user))
            .collect();
        let users = Arc::new(users);
        *self.lock() = Some((generation, Arc::clone(&users)));
        Ok(users.get(name).cloned())
    }

    /// What memory holds for the current generation. Users of another generation are dropped.
    fn lookup(&self) -> Lookup {
        let generation = self.watch.generation();
        let mut current = self.lock();
        match (&*current, generation) {
            (Some((read_under, users)), Some(now)) if *read_under == now => {
                Lookup::Cached(Arc::clone(users))
            }
            (_, now) => {
                *current = None;
                now.map_or(Lookup::Unvouched, Lookup::Stale)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Users)>> {
        // Replaced whole under the lock: a poisoned lock holds nothing half-done.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}
