//! Load: many containers started at once from lazily pulled images, each
//! checking the checksums of every data file it reads. Registry bytes are
//! counted by a proxy: concurrent cold reads of the same chunks must share
//! one fetch, so the bytes fetched stay near the compressed bytes needed.
//! The daemon's memory (VmRSS/VmHWM) and open fds are sampled throughout.
//!
//! The small case runs in CI; the 20-container cases are `#[ignore]`d and
//! run by scripts/test-long.sh.

mod common;

use e2e::containerd::Containerd;
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, sha256_digest, OciLayout};
use e2e::image::{write_oci_layout, LayerBuilder};
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small chunks so every data file is several chunks (and gzip members).
const CHUNK_SIZE: &str = "262144";

struct Image {
    tag: String,
    files: Vec<(String, Vec<u8>)>,
}

/// `n` images sharing the busybox base layer, each with its own data layer
/// of three multi-chunk files; converted to eStargz and pushed. Returns the
/// images and the compressed size of their distinct layers.
fn build_and_push(dir: &Path, reg: &Registry, n: usize) -> (Vec<Image>, u64) {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let mut images = Vec::new();
    for k in 0..n {
        let tag = format!("v{k}");
        let mut data = LayerBuilder::new();
        data.dir("data", 0o755);
        let mut files = Vec::new();
        for (j, size) in [1_500_000usize, 700_000, 300_000].into_iter().enumerate() {
            let path = format!("data/f{j}.bin");
            let bytes = pseudo_random(size, 1000 * k as u64 + j as u64 + 1);
            data.file(&path, bytes.clone(), 0o644);
            files.push((format!("/{path}"), bytes));
        }
        write_oci_layout(
            &src,
            &tag,
            vec![busybox_layer().tar_gz(), data.tar_gz()],
            &["/bin/sh"],
        );
        rsnap_ok(&[
            "convert",
            "--chunk-size",
            CHUNK_SIZE,
            &format!("oci:{}:{tag}", src.display()),
            &format!("oci:{}:{tag}", dst.display()),
        ]);
        skopeo_push(&dst, &tag, &format!("{}/load/app{k}:v1", reg.host()));
        images.push(Image { tag, files });
    }
    // Distinct layers: the busybox layer is the same blob in every image.
    let lay = OciLayout::open(&dst);
    let mut sizes = BTreeMap::new();
    for img in &images {
        for l in lay.manifest(Some(&img.tag))["layers"].as_array().unwrap() {
            sizes.insert(
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            );
        }
    }
    (images, sizes.values().sum())
}

fn checksum_cmd(img: &Image) -> String {
    let paths: Vec<&str> = img.files.iter().map(|f| f.0.as_str()).collect();
    format!("sha256sum {}", paths.join(" "))
}

fn expected(img: &Image) -> String {
    img.files
        .iter()
        .map(|(p, d)| format!("{}  {p}\n", sha256_digest(d).trim_start_matches("sha256:")))
        .collect()
}

/// Peak figures of one process, sampled from /proc.
#[derive(Default, Debug, Clone, Copy)]
struct Peak {
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
}

fn sample(pid: u32, peak: &mut Peak) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    peak.rss_kib = peak.rss_kib.max(kib("VmRSS:"));
    peak.hwm_kib = peak.hwm_kib.max(kib("VmHWM:"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    peak.fds = peak.fds.max(fds);
}

/// Samples a process every 50 ms on a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Peak>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Peak::default();
            while !s.load(Ordering::Relaxed) {
                sample(pid, &mut peak);
                std::thread::sleep(Duration::from_millis(50));
            }
            sample(pid, &mut peak);
            peak
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `containers` containers at once, spread round-robin over `n_images`
/// lazily pulled images; every container checks all its data files.
fn load_case(n_images: usize, containers: usize) {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let (images, needed) = build_and_push(scratch.path(), &reg, n_images);
    let proxy = CountingProxy::start(reg.port);

    // No background fetch and no prefetch: every byte fetched is one a
    // container asked for (or the TOC).
    std::fs::write(
        scratch.path().join("config.toml"),
        "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 2\n",
    )
    .unwrap();
    let daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));
    let mut idle = Peak::default();
    sample(daemon.svc.pid(), &mut idle);
    let sampler = Sampler::start(daemon.svc.pid());

    let refs: Vec<String> = (0..n_images)
        .map(|k| format!("{}/load/app{k}:v1", proxy.host()))
        .collect();
    let sock = ctrd.socket.to_str().unwrap().to_string();
    for r in &refs {
        let out = rsnap_ok(&["pull", "-a", &sock, "-n", e2e::containerd::NAMESPACE, r]);
        assert!(out.contains(" lazy, 0 fetched"), "not lazy: {out}");
    }
    let after_pull = proxy.bytes_down();

    let started = Instant::now();
    let ctrd = Arc::new(ctrd);
    let images = Arc::new(images);
    let threads: Vec<_> = (0..containers)
        .map(|i| {
            let (ctrd, images, r) = (ctrd.clone(), images.clone(), refs[i % n_images].clone());
            std::thread::spawn(move || {
                let img = &images[i % images.len()];
                let out = ctrd.run(&r, Some("remote"), &["sh", "-c", &checksum_cmd(img)]);
                assert_eq!(out, expected(img), "container {i} of {r}");
            })
        })
        .collect();
    let mut failed = 0;
    for t in threads {
        failed += t.join().is_err() as usize;
    }
    let wall = started.elapsed();
    let peak = sampler.finish();
    let fetched = proxy.bytes_down();
    let data_bytes: u64 = images
        .iter()
        .flat_map(|i| i.files.iter().map(|f| f.1.len() as u64))
        .sum();
    eprintln!(
        "load: {containers} containers over {n_images} image(s) in {:.2} s; registry bytes: \
         pull {after_pull}, total {fetched} for {needed} compressed bytes of distinct layers \
         ({:.2}x; {data_bytes} bytes of data files); daemon idle RSS {} KiB, fds {}; \
         peak RSS {} KiB, VmHWM {} KiB, fds {}",
        wall.as_secs_f64(),
        fetched as f64 / needed as f64,
        idle.rss_kib,
        idle.fds,
        peak.rss_kib,
        peak.hwm_kib,
        peak.fds
    );
    assert_eq!(failed, 0, "{failed} containers failed");
    // The data files are incompressible: they must have crossed the wire
    // (proves the counter sees the reads), but once only.
    assert!(
        fetched >= data_bytes,
        "fetched {fetched} < data {data_bytes}"
    );
    assert!(
        fetched <= 2 * needed,
        "fetched {fetched} bytes, over 2x the {needed} compressed bytes needed"
    );
    // Generous bounds: a leak of a buffer or an fd per read would pass them.
    assert!(
        peak.hwm_kib < 512 * 1024,
        "daemon VmHWM {} KiB",
        peak.hwm_kib
    );
    assert!(peak.fds < 512, "daemon had {} fds open", peak.fds);

    drop(Arc::try_unwrap(ctrd).ok().expect("containerd handle"));
    common::stop(daemon, libc::SIGINT);
    assert!(
        e2e::containerd::mounts_under(scratch.path()).is_empty(),
        "mounts left behind"
    );
}

#[test]
fn four_containers_from_two_lazy_images() {
    load_case(2, 4);
}

#[test]
#[ignore = "long: run by scripts/test-long.sh"]
fn twenty_containers_from_one_lazy_image() {
    load_case(1, 20);
}

#[test]
#[ignore = "long: run by scripts/test-long.sh"]
fn twenty_containers_from_five_lazy_images() {
    load_case(5, 20);
}
