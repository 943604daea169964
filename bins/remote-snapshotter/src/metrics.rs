//! Opt-in Prometheus text endpoint (`--metrics-address`) for the remote
//! protocol's counters, the restart machinery (handed-over mounts, TOCs
//! kept on disk, requests a crash abandoned), per-layer fetch figures, the
//! chunk cache (hits, misses, evictions, bytes per tier), request latency
//! histograms and bounded failures. A minimal HTTP/1.1 responder: one GET
//! per connection, any path, so no web framework is pulled in for it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use snapshotter::Metrics;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct SnapshotterCollector(Arc<Metrics>);

impl Collector for SnapshotterCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.snapshot();
        let mut counter = |name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            let e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(e)
        };
        counter(
            "remote_mounts",
            "Layers mounted remotely at prepare",
            m.remote_mounts,
        )?;
        counter(
            "fallback_not_remote",
            "Prepares that fell back: layer not remote (e.g. not eStargz)",
            m.fallback_not_remote,
        )?;
        counter(
            "fallback_unavailable",
            "Prepares that fell back: registry unreachable or unauthorized",
            m.fallback_unavailable,
        )?;
        counter(
            "fallback_error",
            "Prepares that fell back for another error",
            m.fallback_other,
        )?;
        counter(
            "check_failures",
            "Remote layers found broken by a check",
            m.check_failures,
        )?;
        counter(
            "refreshes",
            "Broken remote layers mounted again",
            m.refreshes,
        )?;
        counter(
            "refresh_failures",
            "Broken remote layers that could not be mounted again",
            m.refresh_failures,
        )?;
        counter(
            "restores",
            "Remote layers mounted from metadata (restart or lazy retry)",
            m.restores,
        )?;
        counter(
            "restore_failures",
            "Attempts to mount a remote layer from metadata that failed",
            m.restore_failures,
        )?;
        counter(
            "fallback_pulls",
            "Layers that fell back and were pulled and unpacked by the daemon itself",
            m.unpacked,
        )?;
        counter(
            "fallback_pull_failures",
            "Pulls by the daemon itself that failed (containerd then pulled the layer)",
            m.unpack_failures,
        )?;
        Ok(())
    }
}

/// Figures of the eStargz filesystem, taken before encoding (some need a lock).
#[derive(Debug, Default)]
struct FsFigures {
    counters: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, u64)>,
    latency: Vec<(&'static str, stargzfs::HistogramSnapshot)>,
    layers: Vec<stargzfs::LayerInfo>,
}

impl FsFigures {
    /// The fallback pull's own figures (layers pulled ahead of their Prepare).
    fn add_pull(&mut self, p: &fullpull::Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.extend([
            (
                "fallback_pull_ahead_started",
                "Layers the daemon began pulling ahead of their Prepare (not lazy: no TOC, no index)",
                p.ahead_started.load(Relaxed),
            ),
            (
                "fallback_pull_ahead_used",
                "Layers pulled ahead whose Prepare took the result",
                p.ahead_used.load(Relaxed),
            ),
            (
                "fallback_pull_bytes",
                "Compressed bytes of layers the daemon pulled itself",
                p.compressed_bytes.load(Relaxed),
            ),
        ]);
    }

    async fn take(fs: &stargzfs::StargzFs) -> FsFigures {
        use std::sync::atomic::Ordering::Relaxed;
        let t = fs.toc_stats();
        let mut counters = vec![
            (
                "toc_opened_from_disk",
                "Layers opened from their TOC kept on disk (no registry request)",
                t.opened_from_disk.load(Relaxed),
            ),
            (
                "toc_kept_corrupt",
                "TOCs kept on disk found corrupt, deleted and read again",
                t.corrupt.load(Relaxed),
            ),
            ("toc_kept", "TOCs written to disk", t.saved.load(Relaxed)),
            (
                "unverified_layers_mounted",
                "Layers mounted without verification (allow_no_verification)",
                fs.unverified_mounted(),
            ),
            (
                "toc_fetched",
                "Layers whose TOC was read from the registry (none kept, or the kept one unusable)",
                t.fetched_from_registry.load(Relaxed),
            ),
        ];
        let f = fs.fetch_figures();
        let c = f.cache;
        counters.extend([
            (
                "cache_memory_hits",
                "Chunk lookups answered by the memory tier",
                c.memory_hits,
            ),
            (
                "cache_disk_hits",
                "Chunk lookups answered by the disk tier (verified again)",
                c.disk_hits,
            ),
            (
                "cache_misses",
                "Chunk lookups neither tier answered",
                c.misses,
            ),
            (
                "cache_memory_evictions",
                "Chunks evicted from the memory tier (cap)",
                c.memory_evictions,
            ),
            (
                "cache_disk_evictions",
                "Chunks evicted from the disk tier (cache.max_size)",
                c.disk_evictions,
            ),
            (
                "cache_disk_corrupt",
                "Disk chunks that failed their digest (deleted, never served)",
                c.disk_corrupt,
            ),
            (
                "cache_disk_write_errors",
                "Chunks that could not be written to the disk tier",
                c.disk_write_errors,
            ),
            (
                "cache_memory_hit_bytes",
                "Bytes served from the memory tier",
                c.memory_hit_bytes,
            ),
            (
                "cache_disk_hit_bytes",
                "Bytes served from the disk tier",
                c.disk_hit_bytes,
            ),
            (
                "cache_inserted_bytes",
                "Bytes of verified chunks fetched into the cache",
                c.inserted_bytes,
            ),
            (
                "fetch_request_failures",
                "Registry requests that failed (any cause)",
                f.request_failures,
            ),
            (
                "fetch_request_timeouts",
                "Registry requests cut at the fetch timeout (bounded)",
                f.request_timeouts,
            ),
            (
                "read_timeouts",
                "Reads answered EIO because their wait reached the fetch timeout (bounded)",
                f.read_timeouts,
            ),
        ]);
        let gauges = vec![
            (
                "cache_memory_bytes",
                "Bytes held in the memory tier",
                c.memory_bytes,
            ),
            (
                "cache_disk_bytes",
                "Bytes held in the disk tier",
                c.disk_bytes,
            ),
        ];
        let latency = vec![
            ("foreground", f.foreground_latency),
            ("background", f.background_latency),
        ];
        if let Some(h) = fs.handover_stats() {
            counters.extend([
                (
                    "handover_adopted",
                    "Mounts taken over from a previous process and served",
                    h.adopted.load(Relaxed),
                ),
                (
                    "handover_adopt_failures",
                    "Handed-over mounts that could not be served when tried",
                    h.adopt_failures.load(Relaxed),
                ),
                (
                    "handover_handed_over",
                    "Mounts left to the next process at a graceful stop",
                    h.handed_over.load(Relaxed),
                ),
                (
                    "handover_abandoned_requests",
                    "FUSE requests a crashed previous process had read and not answered (failed by the kernel)",
                    h.abandoned_requests.load(Relaxed),
                ),
                (
                    "handover_undrained_requests",
                    "FUSE requests unanswered when a graceful stop stopped waiting",
                    h.undrained_requests.load(Relaxed),
                ),
                (
                    "handover_given_up",
                    "Mounts the fd holder gave up while no daemon ran (handover_timeout_sec): readers got errors",
                    h.given_up.load(Relaxed),
                ),
                (
                    "handover_keep_failures",
                    "Mounts whose FUSE fd could not be given to the fd holder",
                    h.keep_failures.load(Relaxed),
                ),
            ]);
        }
        FsFigures {
            counters,
            gauges,
            latency,
            layers: fs.layers().await,
        }
    }
}

/// One per-layer figure read from a [`stargzfs::LayerInfo`].
type LayerFigure = fn(&stargzfs::LayerInfo) -> u64;

impl Collector for FsFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.counters {
            let e = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(e)?;
        }
        for (name, help, v) in &self.gauges {
            let e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            prometheus_client::metrics::gauge::ConstGauge::new(*v as i64).encode(e)?;
        }
        if !self.latency.is_empty() {
            let mut e = enc.encode_descriptor(
                "fetch_latency_seconds",
                "Time of each registry request of lazy fetches, by class (foreground: a reader or the prefetch waits; background: the rest of a layer)",
                None,
                MetricType::Histogram,
            )?;
            for (class, h) in &self.latency {
                let labels = [("class", *class)];
                e.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum_seconds,
                        h.count,
                        &per_bucket(h),
                        None,
                    )?;
            }
        }
        let per_layer: [(&str, &str, LayerFigure); 4] = [
            (
                "layer_unverified",
                "1 for a layer mounted without verification, 2 once its whole blob matched \
                 the layer digest, 3 if it did not (the layer is no longer served); 0: verified",
                |l| match l.blob_check {
                    stargzfs::BlobCheck::NotNeeded => 0,
                    stargzfs::BlobCheck::Pending => 1,
                    stargzfs::BlobCheck::Passed => 2,
                    stargzfs::BlobCheck::Failed => 3,
                },
            ),
            (
                "layer_fetched_bytes",
                "Bytes of the layer's blob fetched",
                |l| l.fetched,
            ),
            (
                "layer_requests",
                "Ranged requests sent for the layer",
                |l| l.requests,
            ),
            ("layer_size_bytes", "Size of the layer's blob", |l| l.size),
        ];
        for (name, help, get) in per_layer {
            let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for l in &self.layers {
                let labels = [("layer", l.digest.as_str())];
                let g = prometheus_client::metrics::gauge::ConstGauge::new(get(l) as i64);
                g.encode(e.encode_family(&labels)?)?;
            }
        }
        // Which format each layer is served from, as an info-style gauge.
        let mut e = enc.encode_descriptor(
            "layer_format",
            "Format a mounted layer is served from (estargz: its TOC; gzindex: a plain gzip layer's seekable index)",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.layers {
            let labels = [("layer", l.digest.as_str()), ("format", l.format)];
            let g = prometheus_client::metrics::gauge::ConstGauge::new(1i64);
            g.encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The encoder wants each bucket's own count (it sums them) and a last
/// `+Inf` bucket; the snapshot is cumulative.
fn per_bucket(h: &stargzfs::HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut prev = 0;
    let mut out: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(le, cum)| {
            let n = cum.saturating_sub(prev);
            prev = cum;
            (le, n)
        })
        .collect();
    out.push((f64::INFINITY, h.count.saturating_sub(prev)));
    out
}

#[cfg(test)]
pub fn render(metrics: &Arc<Metrics>) -> String {
    render_with(metrics, None)
}

fn render_with(metrics: &Arc<Metrics>, fs: Option<FsFigures>) -> String {
    let mut reg = Registry::with_prefix("remote_snapshotter");
    reg.register_collector(Box::new(SnapshotterCollector(metrics.clone())));
    if let Some(f) = fs {
        reg.register_collector(Box::new(f));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    fs: Option<Arc<stargzfs::StargzFs>>,
    pull: Option<Arc<fullpull::Stats>>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let (fs, pull) = (fs.clone(), pull.clone());
        tokio::spawn(async move {
            // Only the request head matters; bound what we read.
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
            let mut figures = match &fs {
                Some(fs) => Some(FsFigures::take(fs).await),
                None => None,
            };
            if let (Some(f), Some(p)) = (figures.as_mut(), &pull) {
                f.add_pull(p);
            }
            let body = render_with(&metrics, figures);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_prefix() {
        let m = Arc::new(Metrics::default());
        m.fallback_not_remote
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let text = render(&m);
        assert!(
            text.contains("remote_snapshotter_fallback_not_remote_total 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE remote_snapshotter_remote_mounts counter"),
            "{text}"
        );
    }

    #[test]
    fn renders_filesystem_figures_per_layer() {
        let m = Arc::new(Metrics::default());
        let f = FsFigures {
            counters: vec![("handover_adopted", "h", 2)],
            gauges: vec![("cache_disk_bytes", "d", 4096)],
            latency: vec![(
                "foreground",
                stargzfs::HistogramSnapshot {
                    buckets: vec![(0.01, 1), (0.1, 3)],
                    count: 4,
                    sum_seconds: 5.2,
                },
            )],
            layers: vec![stargzfs::LayerInfo {
                mountpoint: "/m".into(),
                digest: "sha256:ab".into(),
                size: 100,
                fetched: 40,
                requests: 3,
                alive: true,
                blob_check: stargzfs::BlobCheck::Failed,
                format: "gzindex",
            }],
        };
        let text = render_with(&m, Some(f));
        assert!(
            text.contains("remote_snapshotter_handover_adopted_total 2"),
            "{text}"
        );
        assert!(
            text.contains("remote_snapshotter_layer_fetched_bytes{layer=\"sha256:ab\"} 40"),
            "{text}"
        );
        assert!(
            text.contains("remote_snapshotter_layer_requests{layer=\"sha256:ab\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("remote_snapshotter_layer_unverified{layer=\"sha256:ab\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "remote_snapshotter_layer_format{layer=\"sha256:ab\",format=\"gzindex\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("remote_snapshotter_cache_disk_bytes 4096"),
            "{text}"
        );
        // Cumulative buckets as the snapshot had them, and +Inf = count.
        for line in [
            "remote_snapshotter_fetch_latency_seconds_count{class=\"foreground\"} 4",
            "remote_snapshotter_fetch_latency_seconds_bucket{le=\"0.01\",class=\"foreground\"} 1",
            "remote_snapshotter_fetch_latency_seconds_bucket{le=\"0.1\",class=\"foreground\"} 3",
            "remote_snapshotter_fetch_latency_seconds_bucket{le=\"+Inf\",class=\"foreground\"} 4",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
