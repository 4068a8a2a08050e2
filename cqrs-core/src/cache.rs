//! In-process state for the command pipeline: a bounded cache of aggregate states and
//! per-aggregate locks that queue local commands instead of letting them conflict.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// A bounded least-recently-used map from aggregate id to (state, version).
///
/// While a command runs, its aggregate's entry is taken out (commands on one aggregate
/// are serialised by [`KeyedLocks`]), so the cache never hands the same state to two
/// commands and never needs to clone it.
#[derive(Debug)]
pub(crate) struct StateCache<A> {
    capacity: usize,
    inner: Mutex<CacheInner<A>>,
}

#[derive(Debug)]
struct CacheInner<A> {
    entries: HashMap<String, (A, u64, u64)>,
    by_use: BTreeMap<u64, String>,
    tick: u64,
}

impl<A> StateCache<A> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                by_use: BTreeMap::new(),
                tick: 0,
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, CacheInner<A>> {
        // Every critical section below leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the cached state of `id` out of the cache.
    pub(crate) fn take(&self, id: &str) -> Option<(A, u64)> {
        let mut inner = self.inner();
        let (state, version, tick) = inner.entries.remove(id)?;
        inner.by_use.remove(&tick);
        Some((state, version))
    }

    /// Puts the state of `id` at `version` (back) into the cache, evicting the least
    /// recently used entry when full.
    pub(crate) fn put(&self, id: &str, state: A, version: u64) {
        let mut inner = self.inner();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, _, old)) = inner.entries.insert(id.to_owned(), (state, version, tick)) {
            inner.by_use.remove(&old);
        }
        inner.by_use.insert(tick, id.to_owned());
        while inner.entries.len() > self.capacity {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner().entries.len()
    }
}

/// One async mutex per key, created on demand and dropped when nobody holds or awaits it.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.to_owned()).or_default())
        };
        let guard = Arc::clone(&mutex).lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            mutex,
            guard: Some(guard),
        }
    }
}

/// Holds one key's lock; releases it (and forgets the key if nobody waits) on drop.
#[derive(Debug)]
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .locks
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two references left (the map's and ours): nobody else holds or awaits the lock.
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::ptr_eq(m, &self.mutex) && Arc::strong_count(m) == 2)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let cache = StateCache::new(2);
        cache.put("a", 1, 1);
        cache.put("b", 2, 1);
        let a = cache.take("a").expect("a is cached");
        cache.put("a", a.0, a.1); // "a" is now the most recent
        cache.put("c", 3, 1);
        assert_eq!(cache.len(), 2);
        assert!(cache.take("b").is_none(), "b was the least recently used");
        assert_eq!(cache.take("a"), Some((1, 1)));
        assert_eq!(cache.take("c"), Some((3, 1)));
        assert!(cache.take("c").is_none(), "take removes the entry");
    }

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_and_forget_it_afterwards() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("k").await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _second = locks.lock("k").await;
            })
        };
        let other = locks.lock("other").await; // another key is not blocked
        drop(other);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the second lock of k waits for the first"
        );
        drop(first);
        waiter.await.expect("the waiter gets the lock");
        assert!(
            locks.locks.lock().expect("lock").is_empty(),
            "unused keys are forgotten"
        );
    }
}
