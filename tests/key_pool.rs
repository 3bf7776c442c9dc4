//! The key pool under real concurrency (threads taking keys at the same
//! moment, leases dropped by cancellation), rests and rate limits, and as
//! the Replicate analyzer builds it: every key limited to Replicate's 600
//! prediction creates a minute.

use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use secrecy::SecretString;
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

fn pool(n: usize, per_minute: Option<u32>) -> Arc<KeyPool> {
    let keys: Vec<SecretString> = (0..n).map(|i| format!("k{i}").into()).collect();
    let limit = per_minute.and_then(NonZeroU32::new);
    Arc::new(KeyPool::new("test", keys, limit))
}

/// Least-loaded must hold when callers arrive at the same moment: four
/// threads, four idle keys, one key each, round after round.
#[test]
fn four_callers_at_once_take_four_different_idle_keys() {
    const ROUNDS: usize = 3000;
    let mut collisions = 0;
    for _ in 0..ROUNDS {
        let pool = pool(4, None);
        let start = Arc::new(Barrier::new(4));
        let hold = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (pool, start, hold) = (pool.clone(), start.clone(), hold.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let lease = pool.try_acquire(&[]).unwrap();
                    let index = lease.index();
                    // Every lease is held until all four are taken.
                    hold.wait();
                    index
                })
            })
            .collect();
        let mut got: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort_unstable();
        got.dedup();
        if got.len() < 4 {
            collisions += 1;
        }
        assert_eq!(pool.in_flight(), [0, 0, 0, 0]);
    }
    assert_eq!(
        collisions, 0,
        "{collisions} of {ROUNDS} rounds put two calls on one key while another stayed idle"
    );
}

#[tokio::test]
async fn leases_and_waits_dropped_by_cancellation_are_given_back() {
    let pool = pool(3, None);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let lease = pool
                .acquire(&[], Instant::now() + Duration::from_secs(5))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(lease);
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.in_flight(), [10, 10, 10]);
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    assert_eq!(pool.in_flight(), [0, 0, 0]);
    // A call waiting for a resting key that is canceled takes nothing.
    for key in 0..3 {
        pool.rest(key, Duration::from_secs(2));
    }
    let waiting = pool.acquire(&[], Instant::now() + Duration::from_secs(5));
    assert!(tokio::time::timeout(Duration::from_millis(200), waiting)
        .await
        .is_err());
    assert_eq!(pool.in_flight(), [0, 0, 0]);
}

#[test]
fn rests_are_never_shortened_and_every_key_spent_gives_the_soonest_wait() {
    let resting = pool(2, None);
    resting.rest(0, Duration::from_secs(60));
    resting.rest(0, Duration::from_secs(5));
    resting.rest(1, Duration::from_secs(20));
    let all = resting.try_acquire(&[]).unwrap_err();
    assert!(
        all.wait > Duration::from_secs(19) && all.wait <= Duration::from_secs(20),
        "{all:?}"
    );
    let limited = pool(2, Some(2));
    let leases: Vec<_> = (0..4).map(|_| limited.try_acquire(&[]).unwrap()).collect();
    assert_eq!(limited.in_flight(), [2, 2]);
    let spent = limited.try_acquire(&[]).unwrap_err();
    assert!(spent.wait > Duration::from_secs(25), "{spent:?}");
    drop(leases);
    assert_eq!(limited.in_flight(), [0, 0]);
}
