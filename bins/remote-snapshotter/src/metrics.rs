//! Opt-in Prometheus text endpoint (`--metrics-address`) for the remote
//! protocol's counters, the restart machinery (handed-over mounts, TOCs
//! kept on disk, requests a crash abandoned) and per-layer fetch figures. A minimal HTTP/1.1 responder: one GET per
//! connection, any path, so no web framework is pulled in for it.

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
    layers: Vec<stargzfs::LayerInfo>,
}

impl FsFigures {
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
                    "handover_keep_failures",
                    "Mounts whose FUSE fd could not be given to the fd holder",
                    h.keep_failures.load(Relaxed),
                ),
            ]);
        }
        FsFigures {
            counters,
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
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let fs = fs.clone();
        tokio::spawn(async move {
            // Only the request head matters; bound what we read.
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
            let figures = match &fs {
                Some(fs) => Some(FsFigures::take(fs).await),
                None => None,
            };
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
    }
}
