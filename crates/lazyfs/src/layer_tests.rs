//! Layer behaviour over a fake source: fetch sharing, coalescing, faults,
//! prefetch, background fetch, readahead.

use crate::layer::{OpenFile, Read};
use crate::testutil::{sha, FakeSource, TestLayer};
use crate::{ChunkCache, Config, Error, FetchVia, LazyLayer, Scheduler};
use estargz::index::NodeKind;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

pub(crate) struct Fixture {
    pub(crate) layer: Arc<LazyLayer>,
    pub(crate) src: Arc<FakeSource>,
    pub(crate) t: TestLayer,
}

pub(crate) fn cfg() -> Config {
    Config {
        neighbour_bytes: 0,
        fetch_timeout_sec: 1,
        no_background_fetch: true,
        readahead_bytes: 0,
        blob_readahead_bytes: 0,
        // Only the tests of the quiet period wait for it.
        background_quiet_ms: 0,
        ..Config::default()
    }
}

pub(crate) fn fixture(t: TestLayer, cfg: Config, via: impl Into<FetchVia>) -> Fixture {
    let src = Arc::new(FakeSource::new(t.blob.clone()));
    let layer = LazyLayer::from_nodes(
        src.clone(),
        "sha256:layer",
        t.nodes.clone(),
        None,
        &cfg,
        via,
        tokio::runtime::Handle::current(),
    );
    Fixture { layer, src, t }
}

pub(crate) fn ino(t: &TestLayer, path: &str) -> u64 {
    t.id(path) as u64 + 1
}

pub(crate) fn sample() -> TestLayer {
    let mut t = TestLayer::new(1000);
    t.file("big", &data(10_500, 1), 0o644);
    t.file("small", b"hello", 0o644);
    t.file("dir/other", &data(3000, 2), 0o600);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_correct_at_any_offset() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let big = data(10_500, 1);
    let i = ino(&f.t, "big");
    for (off, len) in [
        (0, 10_500),
        (999, 2),
        (1000, 1000),
        (10_400, 500),
        (10_500, 10),
        (5, 0),
        (2500, 4000),
    ] {
        let got = f.layer.read(i, off, len).await.unwrap();
        let end = (off + len).min(10_500) as usize;
        assert_eq!(
            &got[..],
            &big[(off as usize).min(end)..end],
            "off {off} len {len}"
        );
    }
    assert_eq!(
        &f.layer.read(ino(&f.t, "small"), 0, 100).await.unwrap()[..],
        b"hello"
    );
    assert!(matches!(f.layer.read(1, 0, 10).await, Err(Error::NotAFile)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_chunks_are_fetched_in_one_request() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    f.layer.read(ino(&f.t, "big"), 0, 10_500).await.unwrap();
    assert_eq!(f.src.requests(), 1, "11 chunks, one request");
    // Now cached: no new request, and the sync path serves it.
    let again = f
        .layer
        .read_cached(ino(&f.t, "big"), 500, 3000)
        .unwrap()
        .unwrap();
    assert_eq!(&again[..], &data(10_500, 1)[500..3500]);
    assert_eq!(f.src.requests(), 1);
    // A small request limit splits the fetch.
    let c = Config {
        neighbour_bytes: 0,
        max_request_bytes: 1,
        coalesce_gap_bytes: 0,
        ..cfg()
    };
    let f = fixture(sample(), c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.layer.read(ino(&f.t, "big"), 0, 3000).await.unwrap();
    assert_eq!(f.src.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_one_fetch() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    f.src.delay_ms.store(200, SeqCst);
    let i = ino(&f.t, "big");
    let mut tasks = Vec::new();
    for k in 0..16u64 {
        let l = f.layer.clone();
        tasks.push(tokio::spawn(
            async move { l.read(i, 1000 + k * 10, 100).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(f.src.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_chunks_in_two_layers_are_fetched_once() {
    let cache = Arc::new(ChunkCache::memory_only(1 << 20));
    let sched = Scheduler::new(cache, &cfg());
    let a = fixture(sample(), cfg(), sched.clone());
    let mut t = TestLayer::new(1000);
    t.file("elsewhere/copy", &data(10_500, 1), 0o644);
    let b = fixture(t, cfg(), sched);
    a.src.delay_ms.store(200, SeqCst);
    b.src.delay_ms.store(200, SeqCst);
    // At the same time: the second joins the first's request.
    let (la, lb) = (a.layer.clone(), b.layer.clone());
    let (ia, ib) = (ino(&a.t, "big"), ino(&b.t, "elsewhere/copy"));
    let ra = tokio::spawn(async move { la.read(ia, 0, 10_500).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = lb.read(ib, 0, 10_500).await.unwrap();
    ra.await.unwrap().unwrap();
    assert_eq!(&got[..], &data(10_500, 1)[..]);
    assert_eq!((a.src.requests(), b.src.requests()), (1, 0));
    // And afterwards from the cache.
    let got = b.layer.read(ib, 0, 10_500).await.unwrap();
    assert_eq!(&got[..], &data(10_500, 1)[..]);
    assert_eq!(b.src.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_are_never_served_and_nothing_sticks() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let i = ino(&f.t, "big");
    let chunk2 = f.t.nodes[f.t.id("big") as usize].chunks[2].clone();
    *f.src.corrupt_at.lock() = Some(chunk2.blob_offset + 12);
    let err = f.layer.read(i, 2000, 10).await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { ref path, .. } if path == "/big"),
        "{err}"
    );
    assert_eq!(f.layer.stats().snapshot().corrupt_chunks, 1);
    // Other chunks of the same request were fine and are served.
    assert!(f.layer.read(i, 0, 100).await.is_ok());
    *f.src.corrupt_at.lock() = None;
    assert_eq!(
        &f.layer.read(i, 2000, 10).await.unwrap()[..],
        &data(10_500, 1)[2000..2010]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_in_index_is_a_digest_mismatch() {
    let mut t = sample();
    t.edit("small", |n| n.chunks[0].digest = sha(b"something else"));
    let f = fixture(t, cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let err = f.layer.read(ino(&f.t, "small"), 0, 5).await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_source_fails_fast_then_recovers() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let i = ino(&f.t, "big");
    f.layer.read(i, 0, 1000).await.unwrap(); // chunk 0 cached
    f.src.fail.store(true, SeqCst);
    assert!(f.layer.read(i, 0, 1000).await.is_ok(), "cached reads go on");
    let err = f.layer.read(i, 5000, 10).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    f.src.fail.store(false, SeqCst);
    assert!(f.layer.read(i, 5000, 10).await.is_ok(), "no sticky failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_source_times_out_and_recovers() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let i = ino(&f.t, "big");
    f.src.stall.store(true, SeqCst);
    let t0 = Instant::now();
    let err = f.layer.read(i, 0, 10).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t0.elapsed()
    );
    // A second reader of the same stalled chunk is bounded too.
    let t0 = Instant::now();
    assert!(f.layer.read(i, 0, 10).await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(3));
    f.src.stall.store(false, SeqCst);
    // The stalled request itself times out within fetch_timeout; then reads work.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(f.layer.read(i, 0, 10).await.is_ok());
}

/// The kernel retries a failed page read at once; a retry right after a
/// slow failure must not wait the whole timeout again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_right_after_a_slow_failure_fails_at_once_then_reads_again() {
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    let i = ino(&f.t, "big");
    f.src.stall.store(true, SeqCst);
    let t0 = Instant::now();
    assert!(f.layer.read(i, 0, 10).await.is_err());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let t1 = Instant::now();
    let err = f.layer.read(i, 0, 10).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        t1.elapsed() < Duration::from_millis(200),
        "{:?}",
        t1.elapsed()
    );
    // Remembered briefly (250 ms): then the next read asks again.
    f.src.stall.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.layer.read(i, 0, 10).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fetches_the_prioritized_range_in_one_request() {
    let mut t = TestLayer::new(1000);
    t.file("a", &data(5000, 3), 0o644);
    t.file("b", &data(2500, 4), 0o644);
    let end = t.blob.len() as u64;
    t.file(".prefetch.landmark", b"\x0f", 0o644);
    t.file("c", &data(4000, 5), 0o644);
    let src = Arc::new(FakeSource::new(t.blob.clone()));
    let layer = LazyLayer::from_nodes(
        src.clone(),
        "sha256:l",
        t.nodes.clone(),
        Some(end),
        &cfg(),
        Arc::new(ChunkCache::memory_only(1 << 20)),
        tokio::runtime::Handle::current(),
    );
    let r = layer.prefetch().await.unwrap();
    assert_eq!(r.chunks, 8);
    assert_eq!(src.requests(), 1);
    assert_eq!(src.ranges.lock()[0], (0, end));
    assert_eq!(r.fetched_bytes, end);
    // Those files now read without a request; the others need one.
    layer.read(t.id("a") as u64 + 1, 0, 5000).await.unwrap();
    layer.read(t.id("b") as u64 + 1, 0, 2500).await.unwrap();
    assert_eq!(src.requests(), 1);
    layer.read(t.id("c") as u64 + 1, 0, 10).await.unwrap();
    assert_eq!(src.requests(), 2);
    // noprefetch turns it off.
    let c = Config {
        neighbour_bytes: 0,
        noprefetch: true,
        ..cfg()
    };
    let src2 = Arc::new(FakeSource::new(t.blob.clone()));
    let l2 = LazyLayer::from_nodes(
        src2.clone(),
        "sha256:l",
        t.nodes.clone(),
        Some(end),
        &c,
        Arc::new(ChunkCache::memory_only(1 << 20)),
        tokio::runtime::Handle::current(),
    );
    assert_eq!(l2.prefetch().await.unwrap().chunks, 0);
    assert_eq!(src2.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_gets_everything_in_large_requests() {
    let mut t = TestLayer::new(1000);
    for k in 0..20u8 {
        t.file(&format!("f{k}"), &data(3000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_request_bytes: 16 << 10,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.layer.start_background_fetch();
    let t0 = Instant::now();
    while f.layer.background_running() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!f.layer.background_running());
    assert_eq!(f.layer.fetched_bytes(), f.layer.blob_size());
    let s = f.layer.stats().snapshot();
    assert_eq!(s.background_bytes, f.layer.blob_size());
    let n = f.src.requests();
    assert!(
        n >= 2 && n <= 1 + f.layer.blob_size() / (8 << 10),
        "{n} requests"
    );
    for (off, len) in f.src.ranges.lock().iter() {
        assert!(*len <= 16 << 10, "request {off}+{len} over the limit");
    }
    let json: serde_json::Value = serde_json::from_slice(&f.layer.state_json()).unwrap();
    assert_eq!(json["fetchedPercent"], 100.0);
    assert_eq!(json["size"], f.layer.blob_size());
    assert_eq!(json["digest"], "sha256:layer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_waits_for_a_quiet_period_after_mount() {
    let mut t = TestLayer::new(1000);
    for k in 0..4u8 {
        t.file(&format!("f{k}"), &data(3000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_quiet_ms: 400,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    let t0 = Instant::now();
    f.layer.start_background_fetch();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        f.layer.stats().snapshot().background_bytes,
        0,
        "background fetch started before the quiet period"
    );
    while f.layer.background_running() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.layer.fetched_bytes(), f.layer.blob_size());
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_waits_for_the_background_quiet_period() {
    let mut t = TestLayer::new(1000);
    for k in 0..8u8 {
        t.file(&format!("f{k}"), &data(3000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_quiet_ms: 3000,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.layer.start_background_fetch();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Background fetch is holding back; a reader must fetch for itself,
    // not join a batch background fetch claimed and then parked.
    let t0 = Instant::now();
    f.layer.read(ino(&f.t, "f0"), 0, 3000).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_yields_to_readers() {
    let mut t = TestLayer::new(1000);
    for k in 0..40u8 {
        t.file(&format!("f{k}"), &data(3000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        background_request_bytes: 2048,
        background_concurrency: 1,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.src.delay_ms.store(30, SeqCst);
    f.layer.start_background_fetch();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A foreground read is not queued behind background requests: it
    // completes in about one request time.
    let t0 = Instant::now();
    f.layer.read(ino(&f.t, "f39"), 0, 3000).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
}

/// A read through an open file, as FUSE does it.
pub(crate) async fn read_via(f: &Fixture, file: &OpenFile, name: &str, off: u64, len: u64) {
    let i = ino(&f.t, name);
    match f.layer.read_now(i, Some(file), off, len) {
        Read::Ready(r) => r.map(drop).unwrap(),
        Read::Pending(p) => f.layer.read_pending(p).await.map(drop).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reader_gets_readahead() {
    let mut t = TestLayer::new(1000);
    t.file("seq", &data(20_000, 9), 0o644);
    let c = Config {
        neighbour_bytes: 0,
        readahead_bytes: 8000,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    let i = ino(&f.t, "seq");
    read_via(&f, &OpenFile::default(), "seq", 0, 1000).await;
    // Wait for the readahead to land, then the next 8 KB are cached.
    let t0 = Instant::now();
    while f.layer.read_cached(i, 1000, 7000).is_none() && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(f.layer.read_cached(i, 1000, 7000).is_some());
    assert!(
        f.layer.read_cached(i, 12_000, 1000).is_none(),
        "not beyond the window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_serves_after_restart_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    let cc = crate::CacheConfig {
        dir: Some(tmp.path().into()),
        ..Default::default()
    };
    {
        let cache = Arc::new(ChunkCache::new(&cc).unwrap());
        let f = fixture(sample(), cfg(), cache.clone());
        f.layer.read(ino(&f.t, "big"), 0, 10_500).await.unwrap();
        // Disk writes follow the answer to the reader.
        let t0 = Instant::now();
        while cache.disk_entries() < 11 && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.disk_entries(), 11);
    }
    let f = fixture(sample(), cfg(), Arc::new(ChunkCache::new(&cc).unwrap()));
    f.src.fail.store(true, SeqCst);
    let got = f
        .layer
        .read_cached(ino(&f.t, "big"), 0, 10_500)
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &data(10_500, 1)[..]);
    assert_eq!(f.src.requests(), 0);
}

#[test]
fn special_files_are_not_readable() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let mut t = sample();
    t.special("dev/null", NodeKind::Char, 1, 3);
    let f = fixture(t, cfg(), Arc::new(ChunkCache::memory_only(1 << 20)));
    assert!(matches!(
        f.layer.read_cached(ino(&f.t, "dev/null"), 0, 1),
        Some(Err(Error::NotAFile))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_files_in_blob_order_fetches_ahead_across_files() {
    let mut t = TestLayer::new(1000);
    for k in 0..30u8 {
        t.file(&format!("f{k:02}"), &data(1000, k), 0o644);
    }
    let c = Config {
        neighbour_bytes: 0,
        blob_readahead_bytes: 5000,
        coalesce_gap_bytes: 100,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    let wait_cached = |name: &str| {
        let i = ino(&f.t, name);
        let l = f.layer.clone();
        async move {
            let t0 = Instant::now();
            while l.read_cached(i, 0, 1000).is_none() && t0.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            l.read_cached(i, 0, 1000).is_some()
        }
    };
    // f00 then f01: the second read follows the first in the blob.
    for name in ["f00", "f01"] {
        read_via(&f, &OpenFile::default(), name, 0, 1000).await;
    }
    assert!(wait_cached("f03").await, "files after f01 fetched ahead");
    let member = |name: &str| {
        let c = &f.t.nodes[f.t.id(name) as usize].chunks[0];
        (c.blob_offset, c.blob_end - c.blob_offset)
    };
    assert!(5000 / member("f02").1 >= 2);
    assert!(
        f.layer.read_cached(ino(&f.t, "f20"), 0, 1000).is_none(),
        "bounded by the window"
    );
    // A jump elsewhere is not a walk: only the file read is fetched.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = f.src.requests();
    read_via(&f, &OpenFile::default(), "f25", 0, 1000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.src.requests(), before + 1);
    assert_eq!(*f.src.ranges.lock().last().unwrap(), member("f25"));
}

/// A read that goes to the network brings the members stored near its own
/// in the same request (small files read one after another), and only
/// those within `neighbour_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_brings_its_neighbours_in_the_same_request() {
    let mut t = TestLayer::new(1000);
    for k in 0..6u8 {
        t.file(&format!("f{k}"), &data(900, k), 0o644);
    }
    // Incompressible, so its member is ~64 kB long.
    let mut x = 0x2545_f491_u32;
    let noise: Vec<u8> = (0..64_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    t.file("far", &noise, 0o644);
    t.file("after", &data(900, 10), 0o644);
    let c = Config {
        neighbour_bytes: 16_000,
        coalesce_gap_bytes: 0,
        ..cfg()
    };
    let f = fixture(t, c, Arc::new(ChunkCache::memory_only(1 << 20)));
    f.layer.read(ino(&f.t, "f2"), 0, 900).await.unwrap();
    assert_eq!(f.src.requests(), 1);
    // f0..f5 lie within 16 kB of f2's member: all came with it.
    for k in 0..6 {
        let got = f
            .layer
            .read(ino(&f.t, &format!("f{k}")), 0, 900)
            .await
            .unwrap();
        assert_eq!(&got[..], &data(900, k as u8)[..]);
    }
    assert_eq!(f.src.requests(), 1, "neighbours were fetched with the miss");
    // `after` lies beyond a 64 kB member: not a neighbour.
    f.layer.read(ino(&f.t, "after"), 0, 900).await.unwrap();
    assert_eq!(f.src.requests(), 2);
}

/// Reads that walk the prioritized part of an optimized layer in order do
/// not read ahead past its landmark (the rest is in no reading order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_walk_stops_at_the_landmark() {
    let mut t = TestLayer::new(1000);
    for k in 0..4u8 {
        t.file(&format!("p{k}"), &data(1000, k), 0o644);
    }
    let end = t.blob.len() as u64;
    t.file(".prefetch.landmark", b"\x0f", 0o644);
    for k in 0..10u8 {
        t.file(&format!("r{k}"), &data(1000, 10 + k), 0o644);
    }
    let src = Arc::new(FakeSource::new(t.blob.clone()));
    let c = Config {
        neighbour_bytes: 0,
        noprefetch: true,
        blob_readahead_bytes: 1 << 20,
        coalesce_gap_bytes: 100,
        ..cfg()
    };
    let layer = LazyLayer::from_nodes(
        src.clone(),
        "sha256:l",
        t.nodes.clone(),
        Some(end),
        &c,
        Arc::new(ChunkCache::memory_only(1 << 20)),
        tokio::runtime::Handle::current(),
    );
    let of = OpenFile::default();
    for k in 0..4 {
        let i = t.id(&format!("p{k}")) as u64 + 1;
        match layer.read_now(i, Some(&of), 0, 1000) {
            Read::Ready(r) => drop(r.unwrap()),
            Read::Pending(p) => drop(layer.read_pending(p).await.unwrap()),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let max_end = src.ranges.lock().iter().map(|&(o, l)| o + l).max().unwrap();
    assert!(max_end <= end, "fetched up to {max_end}, landmark at {end}");
    let r0 = t.id("r0") as u64 + 1;
    assert!(layer.read_cached(r0, 0, 1000).is_none());
}
