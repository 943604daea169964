//! The read path over a fake source: adaptive readahead, multi-range
//! requests, background fetch yielding to readers and bounded in memory, and
//! reads joining the prefetch.

use crate::layer::OpenFile;
use crate::layer_tests::{cfg, data, fixture, ino, read_via};
use crate::readahead::MIN_WINDOW;
use crate::testutil::{FakeSource, TestLayer};
use crate::{CacheConfig, ChunkCache, Config, LazyLayer, Scheduler};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 16 << 10;

/// Bytes gzip cannot shrink, so compressed sizes are file sizes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn one_big_file(len: usize) -> TestLayer {
    let mut t = TestLayer::new(CHUNK);
    t.file("big", &noise(len, 7), 0o644);
    t
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_grow_the_window_and_random_ones_do_not() {
    let len = 6 << 20;
    let c = Config {
        neighbour_bytes: 0,
        readahead_bytes: 2 << 20,
        ..cfg()
    };
    // Sequential, 128 KiB at a time over the first 3 MiB.
    let f = fixture(
        one_big_file(len),
        c.clone(),
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    let of = OpenFile::default();
    let step = 128 << 10;
    for k in 0..24u64 {
        read_via(&f, &of, "big", k * step, step).await;
    }
    settle().await;
    let ranges = f.src.ranges.lock().clone();
    let largest = ranges.iter().map(|r| r.1).max().unwrap();
    assert!(largest >= 2 * MIN_WINDOW, "the window grew: {ranges:?}");
    // Ahead of the reader, but never more than the maximum window ahead.
    let fetched = f.layer.stats().snapshot().on_demand_bytes;
    let compressed_per_byte = f.layer.blob_size() as f64 / len as f64;
    let read = 24 * step;
    assert!(fetched as f64 > read as f64 * compressed_per_byte);
    assert!(
        (fetched as f64)
            < (read + (2 << 20) + 2 * CHUNK as u64) as f64 * compressed_per_byte + 4096.0,
        "{fetched} fetched for {read} read"
    );

    // Scattered 4 KiB reads: each costs its chunk and at most the smallest window.
    let f = fixture(
        one_big_file(len),
        c,
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    let of = OpenFile::default();
    let offsets = [5u64 << 20, 1 << 20, 4 << 20, 300 << 10, 3 << 20, 2 << 20];
    for off in offsets {
        read_via(&f, &of, "big", off, 4096).await;
    }
    settle().await;
    let per_read = (MIN_WINDOW + 2 * CHUNK as u64) as f64 * f.layer.blob_size() as f64 / len as f64;
    let fetched = f.layer.stats().snapshot().on_demand_bytes as f64;
    assert!(
        fetched <= offsets.len() as f64 * per_read + 4096.0,
        "{fetched} fetched for {} scattered reads",
        offsets.len()
    );
    assert!(f
        .src
        .ranges
        .lock()
        .iter()
        .all(|r| (r.1 as f64) <= per_read + 1024.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_spans_become_one_multi_range_request() {
    for multi in [true, false] {
        let c = Config {
            neighbour_bytes: 0,
            coalesce_gap_bytes: 0,
            ..cfg()
        };
        let mut t = TestLayer::new(1000);
        t.file("f", &data(10_000, 3), 0o644);
        let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
        f.src.multi.store(multi, SeqCst);
        let i = ino(&f.t, "f");
        // Chunks 0, 2, 4, 6, 8 cached: the rest are five scattered spans.
        for k in (0..10u64).step_by(2) {
            f.layer.read(i, k * 1000, 10).await.unwrap();
        }
        let before = f.src.requests();
        let got = f.layer.read(i, 0, 10_000).await.unwrap();
        assert_eq!(&got[..], &data(10_000, 3)[..]);
        let requests = f.src.requests() - before;
        if multi {
            assert_eq!(requests, 1);
            assert_eq!(f.src.multi_requests.lock().last().unwrap().len(), 5);
        } else {
            assert_eq!(requests, 5);
            assert!(f.src.multi_requests.lock().is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_waits_for_reads_in_flight_and_resumes_after() {
    let mut t = TestLayer::new(1000);
    for k in 0..20u8 {
        t.file(&format!("f{k}"), &data(3000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_request_bytes: 4096,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.src.delay_ms.store(400, SeqCst);
    let (l, i) = (f.layer.clone(), ino(&f.t, "f19"));
    let reader = tokio::spawn(async move { l.read(i, 0, 3000).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.layer.start_background_fetch();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(f.src.requests(), 1, "only the read's request while it runs");
    reader.await.unwrap().unwrap();
    f.src.delay_ms.store(0, SeqCst);
    let t0 = Instant::now();
    while f.layer.background_running() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        f.layer.fetched_bytes(),
        f.layer.blob_size(),
        "resumed and finished"
    );
    assert!(f.layer.stats().snapshot().background_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_joins_the_prefetch_in_flight() {
    let mut t = TestLayer::new(1000);
    t.file("a", &data(5000, 3), 0o644);
    t.file("b", &data(2500, 4), 0o644);
    let end = t.blob.len() as u64;
    t.file(".prefetch.landmark", b"\x0f", 0o644);
    t.file("c", &data(4000, 5), 0o644);
    let src = Arc::new(FakeSource::new(t.blob.clone()));
    src.delay_ms.store(300, SeqCst);
    let layer = LazyLayer::from_nodes(
        src.clone(),
        "sha256:l",
        t.nodes.clone(),
        Some(end),
        &cfg(),
        Arc::new(ChunkCache::memory_only(1 << 20)),
        tokio::runtime::Handle::current(),
    );
    let t0 = Instant::now();
    layer.start_prefetch();
    assert!(t0.elapsed() < Duration::from_millis(100), "does not wait");
    let got = layer.read(t.id("b") as u64 + 1, 0, 2500).await.unwrap();
    assert_eq!(&got[..], &data(2500, 4)[..]);
    assert_eq!(src.requests(), 1, "the read joined the prefetch");
    assert_eq!(src.ranges.lock()[0], (0, end));
    assert!(
        t0.elapsed() < Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    // The rest of the range is there too; nothing was fetched twice.
    layer.read(t.id("a") as u64 + 1, 0, 5000).await.unwrap();
    assert_eq!(src.requests(), 1);
    assert_eq!(layer.stats().snapshot().prefetch_bytes, end);
    assert_eq!(layer.prefetch().await.unwrap().chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_holds_a_bounded_number_of_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::new(&CacheConfig {
            dir: Some(tmp.path().into()),
            ..Default::default()
        })
        .unwrap(),
    );
    let mut t = TestLayer::new(CHUNK);
    for k in 0..32u8 {
        t.file(&format!("f{k}"), &noise(256 << 10, k as u64 + 1), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_request_bytes: 64 << 10,
        background_concurrency: 2,
        ..cfg()
    };
    let sched = Scheduler::new(cache.clone(), &c);
    let f = fixture(t, c, sched.clone());
    f.layer.start_background_fetch();
    let t0 = Instant::now();
    while f.layer.background_running() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.layer.fetched_bytes(), f.layer.blob_size());
    assert_eq!(cache.disk_entries(), 32 * 16);
    // Disk only: the memory tier is for what readers read.
    assert_eq!(cache.stats.memory_bytes.load(Relaxed), 0);
    // At most two answers (one per slot) and one chunk each, at any time.
    let peak = sched.background_held_peak.load(Relaxed);
    assert!(peak > 0);
    assert!(peak <= 2 * ((64 << 10) + CHUNK as u64), "peak {peak}");
    assert!(f.src.max_running.load(SeqCst) <= 2);
    assert!(f.src.ranges.lock().iter().all(|r| r.1 <= 64 << 10));
}
