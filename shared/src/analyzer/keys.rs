//! A pool of API keys for one provider.
//!
//! Every call takes a key from the pool and gives it back when done. The
//! pool hands out the least-loaded key that may be used now: it is not
//! resting after a 429, and its own rate limit (Replicate allows 600
//! prediction creates a minute per account) has room. When no key may be
//! used before the caller's deadline, [`KeyPool::acquire`] says how long the
//! soonest one rests, and the chunk goes back to the queue.
//!
//! Keys are named by their 1-based number in the configured list; their
//! values never leave this module except through [`KeyLease::secret`], which
//! only the code that builds a request's header calls.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

/// The longest a call waits in [`KeyPool::acquire`] for a key to be free
/// again; past that the chunk is better off back in the queue.
pub const MAX_KEY_WAIT: Duration = Duration::from_secs(5);

/// The keys of one provider, their load, rate limits and rests.
pub struct KeyPool {
    provider: &'static str,
    keys: Vec<Key>,
    clock: DefaultClock,
    /// Held while a key is chosen, so that two callers at once never both
    /// see the same key as the least loaded.
    choosing: Mutex<()>,
}

struct Key {
    secret: SecretString,
    limiter: Option<DefaultDirectRateLimiter>,
    state: Mutex<KeyState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyState {
    in_flight: u32,
    calls: u64,
    resting_until: Option<Instant>,
}

/// Every key of the pool rests (or has used its rate limit) for at least
/// `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {keys} keys are rate-limited for at least {} s", wait.as_secs())]
pub struct AllResting {
    pub keys: usize,
    pub wait: Duration,
}

/// A configuration mistake in a key list; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyListError(pub String);

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPool")
            .field("provider", &self.provider)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyPool {
    /// A pool of `keys`, each limited to `per_minute` calls when given.
    ///
    /// # Panics
    /// Never; an empty `keys` gives a pool whose [`acquire`] always fails.
    ///
    /// [`acquire`]: KeyPool::acquire
    pub fn new(
        provider: &'static str,
        keys: Vec<SecretString>,
        per_minute: Option<NonZeroU32>,
    ) -> KeyPool {
        let keys = keys
            .into_iter()
            .map(|secret| Key {
                secret,
                limiter: per_minute.map(|n| RateLimiter::direct(Quota::per_minute(n))),
                state: Mutex::new(KeyState::default()),
            })
            .collect();
        KeyPool {
            provider,
            keys,
            clock: DefaultClock::default(),
            choosing: Mutex::new(()),
        }
    }

    /// A pool from a comma-separated list, as in `GEMINI_API_KEYS`. Blanks
    /// around keys are ignored; an empty list or an empty entry is an error
    /// naming `variable` and the entry's position (never a key's value).
    pub fn from_list(
        provider: &'static str,
        variable: &str,
        list: &str,
        per_minute: Option<NonZeroU32>,
    ) -> Result<KeyPool, KeyListError> {
        if list.trim().is_empty() {
            return Err(KeyListError(format!(
                "{variable} is empty: give one or more API keys, separated by commas"
            )));
        }
        let mut keys = Vec::new();
        for (i, entry) in list.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(KeyListError(format!(
                    "{variable}: key {} of the list is empty (a stray comma?)",
                    i + 1
                )));
            }
            if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(KeyListError(format!(
                    "{variable}: key {} of the list contains a space or control character",
                    i + 1
                )));
            }
            keys.push(SecretString::from(entry.to_string()));
        }
        Ok(KeyPool::new(provider, keys, per_minute))
    }

    /// The provider the keys are for, for log fields.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Calls in flight per key, in list order.
    pub fn in_flight(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.state().in_flight).collect()
    }

    /// Takes the least-loaded key that may be used now, preferring those in
    /// `prefer` (0-based indexes), without waiting.
    pub fn try_acquire(&self, prefer: &[usize]) -> Result<KeyLease<'_>, AllResting> {
        // Only counters are guarded: a panic elsewhere leaves them usable.
        let _choosing = self.choosing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut order: Vec<(bool, u32, u64, usize)> = Vec::with_capacity(self.keys.len());
        let mut soonest: Option<Duration> = None;
        let mut note = |wait: Duration| soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
        for (index, key) in self.keys.iter().enumerate() {
            let state = key.state();
            match state.resting_until {
                Some(until) if until > now => note(until - now),
                _ => order.push((
                    !prefer.contains(&index),
                    state.in_flight,
                    state.calls,
                    index,
                )),
            }
        }
        order.sort_unstable();
        for (_, _, _, index) in order {
            let key = &self.keys[index];
            if let Some(limiter) = &key.limiter {
                if let Err(not_until) = limiter.check() {
                    note(not_until.wait_time_from(self.clock.now()));
                    continue;
                }
            }
            let mut state = key.state();
            state.in_flight += 1;
            state.calls += 1;
            return Ok(KeyLease { pool: self, index });
        }
        Err(AllResting {
            keys: self.keys.len(),
            wait: soonest
                .unwrap_or(MAX_KEY_WAIT)
                .max(Duration::from_millis(1)),
        })
    }

    /// Like [`try_acquire`], but waits for a key when the soonest one is
    /// free within [`MAX_KEY_WAIT`] and before `deadline`.
    ///
    /// [`try_acquire`]: KeyPool::try_acquire
    pub async fn acquire(
        &self,
        prefer: &[usize],
        deadline: Instant,
    ) -> Result<KeyLease<'_>, AllResting> {
        let give_up = deadline.min(Instant::now() + MAX_KEY_WAIT);
        loop {
            match self.try_acquire(prefer) {
                Ok(lease) => return Ok(lease),
                Err(resting) if Instant::now() + resting.wait <= give_up => {
                    tokio::time::sleep(resting.wait).await;
                }
                Err(resting) => return Err(resting),
            }
        }
    }

    /// Lets key `index` rest for `duration` from now (never shortening a
    /// rest already set).
    pub fn rest(&self, index: usize, duration: Duration) {
        let Some(key) = self.keys.get(index) else {
            return;
        };
        let until = Instant::now() + duration;
        let mut state = key.state();
        state.resting_until = Some(state.resting_until.map_or(until, |u| u.max(until)));
        tracing::warn!(
            provider = self.provider,
            key = index + 1,
            rest_s = duration.as_secs_f64(),
            "key rate-limited; resting"
        );
    }
}

impl Key {
    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        // The state is plain counters: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One key taken from a [`KeyPool`]; given back when dropped.
pub struct KeyLease<'a> {
    pool: &'a KeyPool,
    index: usize,
}

impl KeyLease<'_> {
    /// The key's 0-based index in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The key's 1-based number, as logs name it.
    pub fn number(&self) -> usize {
        self.index + 1
    }

    /// The key's value, for the request header and nothing else.
    pub fn secret(&self) -> &str {
        self.pool.keys[self.index].secret.expose_secret()
    }

    /// Lets this key rest for `duration` (after a 429).
    pub fn rest(&self, duration: Duration) {
        self.pool.rest(self.index, duration);
    }
}

impl std::fmt::Debug for KeyLease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLease(key {})", self.number())
    }
}

impl Drop for KeyLease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.keys[self.index].state();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, per_minute: Option<u32>) -> KeyPool {
        let keys = (0..n)
            .map(|i| SecretString::from(format!("key-{i}")))
            .collect();
        KeyPool::new("test", keys, per_minute.and_then(NonZeroU32::new))
    }

    #[test]
    fn the_least_loaded_key_is_taken_first() {
        let pool = pool(3, None);
        let a = pool.try_acquire(&[]).unwrap();
        let b = pool.try_acquire(&[]).unwrap();
        let c = pool.try_acquire(&[]).unwrap();
        assert_eq!((a.index(), b.index(), c.index()), (0, 1, 2));
        drop(b);
        assert_eq!(pool.in_flight(), [1, 0, 1]);
        assert_eq!(pool.try_acquire(&[]).unwrap().index(), 1);
    }

    #[test]
    fn a_preferred_key_wins_while_it_is_free() {
        let pool = pool(3, None);
        let _busy = pool.try_acquire(&[2]).unwrap();
        assert_eq!(pool.in_flight(), [0, 0, 1]);
        assert_eq!(pool.try_acquire(&[2]).unwrap().index(), 2);
    }

    #[test]
    fn a_resting_key_is_skipped_and_all_resting_says_how_long() {
        let pool = pool(2, None);
        pool.rest(0, Duration::from_secs(30));
        assert_eq!(pool.try_acquire(&[0]).unwrap().index(), 1);
        pool.rest(1, Duration::from_secs(10));
        let resting = pool.try_acquire(&[]).unwrap_err();
        assert!(resting.wait > Duration::from_secs(9) && resting.wait <= Duration::from_secs(10));
    }

    #[test]
    fn a_key_over_its_rate_limit_is_skipped() {
        let pool = pool(2, Some(1));
        let first = pool.try_acquire(&[]).unwrap().index();
        let second = pool.try_acquire(&[]).unwrap().index();
        assert_ne!(first, second);
        let limited = pool.try_acquire(&[]).unwrap_err();
        assert!(limited.wait > Duration::from_secs(50), "{limited:?}");
    }

    #[test]
    fn key_lists_name_the_variable_and_the_entry_never_the_value() {
        let err = KeyPool::from_list("x", "GEMINI_API_KEYS", "abc,,def", None).unwrap_err();
        assert_eq!(
            err.0,
            "GEMINI_API_KEYS: key 2 of the list is empty (a stray comma?)"
        );
        let err = KeyPool::from_list("x", "GEMINI_API_KEYS", " ", None).unwrap_err();
        assert!(err.0.starts_with("GEMINI_API_KEYS is empty"));
        let err = KeyPool::from_list("x", "K", "secret1, sec ret2", None).unwrap_err();
        assert!(!err.0.contains("sec"), "{}", err.0);
        let pool = KeyPool::from_list("x", "K", " sk-one , sk-two ", None).unwrap();
        assert_eq!(pool.len(), 2);
        let lease = pool.try_acquire(&[]).unwrap();
        assert_eq!(lease.secret(), "sk-one");
        let shown = format!("{pool:?} {lease:?}");
        assert!(!shown.contains("sk-"), "{shown}");
    }

    #[tokio::test]
    async fn acquire_waits_for_a_key_that_is_free_soon() {
        let pool = pool(1, None);
        pool.rest(0, Duration::from_millis(50));
        let lease = pool
            .acquire(&[], Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(lease.number(), 1);
        pool.rest(0, Duration::from_secs(60));
        drop(lease);
        let resting = pool
            .acquire(&[], Instant::now() + Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(resting.wait > MAX_KEY_WAIT);
    }
}
