#![cfg(feature = "registry")]
//! Layers served by a real docker-registry on 127.0.0.1: mounted and
//! compared with their tar, and the registry really stopped and restarted
//! under a mount.

mod common;

use bytes::Bytes;
use common::*;
use e2e::registry::{Registry, RegistryOptions};
use lazyfs::{ChunkCache, Config, RangeSource};
use registry::{Client, ClientConfig, Reference};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client() -> Client {
    Client::new(ClientConfig {
        retries: 1,
        retry_base: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap()
}

fn push(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    reg: &Registry,
    blob: &Blob,
) -> Arc<dyn RangeSource> {
    let repo = Reference::new(&reg.host(), "lazyfs/test").unwrap();
    rt.block_on(async {
        c.push_blob(&repo, &blob.digest, Bytes::from(blob.bytes.clone()))
            .await
            .unwrap();
        Arc::new(
            c.blob_reader(&repo, &blob.digest, Some(blob.bytes.len() as u64))
                .await
                .unwrap(),
        ) as Arc<dyn RangeSource>
    })
}

#[test]
fn layer_from_registry_matches_its_tar() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = lower_layer();
    let blob = to_estargz(&l, 64 << 10, &[]);
    let src = push(&rt, &client(), &reg, &blob);
    let cfg = Config {
        fetch_timeout_sec: 5,
        no_background_fetch: true,
        ..Config::default()
    };
    let m = mount_source(
        &rt,
        src,
        &blob,
        &cfg,
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    // Many readers at once.
    let root = m.path().to_path_buf();
    let threads: Vec<_> = (0..6)
        .map(|k| {
            let root = root.clone();
            std::thread::spawn(move || {
                for i in 0..9 {
                    let name = std::fs::read_dir(root.join("data"))
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .find(|p| {
                            p.file_name()
                                .unwrap()
                                .to_string_lossy()
                                .starts_with(&format!("f{}", (i + k) % 9))
                        })
                        .unwrap();
                    std::fs::read(name).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    compare(&l, m.path());
    let s = m.layer.stats().snapshot();
    assert!(
        s.on_demand_bytes <= blob.bytes.len() as u64,
        "no chunk fetched twice: {s:?}"
    );
}

#[test]
fn registry_outage_cached_reads_go_on_uncached_fail_then_recover() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("registry-data");
    let mut reg = Registry::start_with(
        tmp.path(),
        RegistryOptions {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let port = reg.port;
    let l = lower_layer();
    let blob = to_estargz(&l, 64 << 10, &[]);
    let src = push(&rt, &client(), &reg, &blob);
    let cfg = Config {
        fetch_timeout_sec: 3,
        no_background_fetch: true,
        ..Config::default()
    };
    let cache_root = tmp.path().join("state");
    let cache = Arc::new(
        ChunkCache::new(&lazyfs::CacheConfig {
            dir: Some(cache_root),
            ..Default::default()
        })
        .unwrap(),
    );
    let m = mount_source(&rt, src, &blob, &cfg, cache);
    let cached = m.path().join("data/f7-300000");
    let uncached = m.path().join("data/f2-4095");
    assert_eq!(std::fs::read(&cached).unwrap(), noise(300_000, 8));

    reg.stop();
    // Drop the page cache too, so reads really come to us.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        noise(300_000, 8),
        "cached read during outage"
    );
    let t0 = Instant::now();
    let err = std::fs::read(&uncached).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "bounded failure: {:?}",
        t0.elapsed()
    );
    assert!(m.handle.as_ref().unwrap().is_alive());

    let _reg = Registry::start_with(
        tmp.path(),
        RegistryOptions {
            data_dir: Some(data),
            port: Some(port),
            ..Default::default()
        },
    );
    assert_eq!(
        std::fs::read(&uncached).unwrap(),
        noise(4095, 3),
        "recovers by itself"
    );
    compare(&l, m.path());
}
