//! The key pool as the Replicate analyzer builds it: every key limited to
//! Replicate's 600 prediction creates a minute.

use std::num::NonZeroU32;
use std::time::Duration;

use shotlist_shared::analyzer::keys::KeyPool;
use shotlist_shared::analyzer::replicate::{CREATES_PER_MINUTE, KEYS_VARIABLE, NAME};
use tokio::time::Instant;

fn replicate_pool(keys: usize) -> KeyPool {
    let list: Vec<String> = (1..=keys).map(|i| format!("r8_key{i}")).collect();
    let limit = NonZeroU32::new(CREATES_PER_MINUTE);
    KeyPool::from_list(NAME, KEYS_VARIABLE, &list.join(","), limit).unwrap()
}

#[tokio::test]
async fn five_keys_allow_600_creates_each_at_once_then_one_every_100_ms() {
    let pool = replicate_pool(5);
    let mut per_key = [0u32; 5];
    for _ in 0..5 * CREATES_PER_MINUTE {
        // Each lease is given back at once: only the rate limit counts.
        per_key[pool.try_acquire(&[]).unwrap().index()] += 1;
    }
    assert_eq!(per_key, [CREATES_PER_MINUTE; 5]);
    let limited = pool.try_acquire(&[]).unwrap_err();
    assert_eq!(limited.keys, 5);
    assert!(limited.wait <= Duration::from_millis(100), "{limited:?}");
    // A key is free again within the quota's 100 ms: acquire waits for it
    // rather than giving up.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    pool.acquire(&[], deadline).await.unwrap();
    // A sanity bound only, with room for a busy machine.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn concurrent_calls_spread_over_the_least_loaded_keys() {
    let pool = replicate_pool(3);
    let held: Vec<_> = (0..6).map(|_| pool.try_acquire(&[]).unwrap()).collect();
    assert_eq!(pool.in_flight(), [2, 2, 2]);
    drop(held);
    assert_eq!(pool.in_flight(), [0, 0, 0]);
}
