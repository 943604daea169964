//! Ranged-read benchmark against a real docker-registry on 127.0.0.1 (not a
//! timed test: `#[ignore]`d; run through `bench/registry_ranged.sh`).
//! Reads of 1 KiB..4 MiB at random offsets of a 64 MiB blob, 1 and 16 at a
//! time, plus 16 ranges in one multi-range request against 16 single ones.

use bytes::Bytes;
use registry::{Client, ClientConfig, Digest, Reference};
use std::time::{Duration, Instant};

fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn offsets(n: usize, max: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ranged_reads() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = e2e::registry::Registry::start(scratch.path());
    let c = Client::new(ClientConfig::default()).unwrap();
    let r = Reference::new(&reg.host(), "bench/blob").unwrap();
    let blob = data(64 << 20);
    let d = Digest::sha256_of(&blob);
    c.push_blob(&r, &d, Bytes::from(blob)).await.unwrap();
    let br = c.blob_reader(&r, &d, None).await.unwrap();
    // Warm the connection pool and the registry's page cache.
    for o in offsets(32, br.size() - (4 << 20), 7) {
        br.read_at(o, 4 << 20).await.unwrap();
    }
    println!("| read size | concurrency | reads | reads/s | MB/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for size in [1u64 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20] {
        for conc in [1usize, 16] {
            let n = ((256u64 << 20) / size).clamp(64, 2000) as usize;
            let offs = offsets(n, br.size() - size, size ^ conc as u64);
            let start = Instant::now();
            let mut lat = Vec::with_capacity(n);
            for batch in offs.chunks(conc) {
                let futs = batch.iter().map(|&o| {
                    let br = br.clone();
                    async move {
                        let t = Instant::now();
                        let b = br.read_at(o, size).await.unwrap();
                        assert_eq!(b.len() as u64, size);
                        t.elapsed()
                    }
                });
                lat.extend(futures::future::join_all(futs).await);
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "| {} KiB | {conc} | {n} | {:.0} | {:.0} | {:.2} | {:.2} |",
                size >> 10,
                n as f64 / secs,
                (n as u64 * size) as f64 / secs / 1e6,
                pct(&mut lat, 0.5).as_secs_f64() * 1e3,
                pct(&mut lat, 0.99).as_secs_f64() * 1e3,
            );
        }
    }
    // 16 scattered 64 KiB ranges: one multi-range request vs 16 single ones.
    let rounds = 100;
    let mut multi = Duration::ZERO;
    let mut single = Duration::ZERO;
    for i in 0..rounds {
        let ranges: Vec<(u64, u64)> = offsets(16, br.size() - (64 << 10), 100 + i)
            .into_iter()
            .map(|o| (o, 64 << 10))
            .collect();
        let t = Instant::now();
        br.read_ranges(&ranges).await.unwrap();
        multi += t.elapsed();
        let t = Instant::now();
        for &(o, l) in &ranges {
            br.read_at(o, l).await.unwrap();
        }
        single += t.elapsed();
    }
    println!(
        "\n16 x 64 KiB scattered: one multi-range request {:.2} ms, 16 sequential single ranges {:.2} ms",
        multi.as_secs_f64() * 1e3 / rounds as f64,
        single.as_secs_f64() * 1e3 / rounds as f64
    );
}
