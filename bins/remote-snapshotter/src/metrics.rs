//! Opt-in Prometheus text endpoint (`--metrics-address`) for the remote
//! protocol's counters. A minimal HTTP/1.1 responder: one GET per
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
        Ok(())
    }
}

pub fn render(metrics: &Arc<Metrics>) -> String {
    let mut reg = Registry::with_prefix("remote_snapshotter");
    reg.register_collector(Box::new(SnapshotterCollector(metrics.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Only the request head matters; bound what we read.
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = render(&metrics);
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
}
