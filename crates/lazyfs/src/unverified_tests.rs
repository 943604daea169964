//! Legacy stargz (no chunk digests) through the lazy read path: refused
//! unless allowed; allowed, served unchecked from memory only, then the
//! whole blob checked against the layer digest once every chunk was
//! fetched; a blob or a served chunk that does not match stops the layer.
//! And min-chunk-size layers: one fetch per shared member.

use crate::layer_tests::cfg;
use crate::source::{RangeSource, SourceError};
use crate::testutil::FakeSource;
use crate::{BlobCheck, CacheConfig, ChunkCache, Config, Error, LazyLayer};
use async_trait::async_trait;
use bytes::Bytes;
use e2e::image::LayerBuilder;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

struct Legacy {
    blob: Vec<u8>,
    digest: String,
    files: Vec<(String, Vec<u8>)>,
}

/// A legacy stargz blob of a few files; stored (level 0) so that blobs of
/// other contents with the same sizes have the same layout.
fn legacy(seed: u64) -> Legacy {
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755);
    let mut files = Vec::new();
    for (i, len) in [10usize, 5000, 40_000, 1].into_iter().enumerate() {
        let name = format!("etc/f{i}");
        let data = e2e::image::pseudo_random(len, seed * 100 + i as u64);
        l.file(&name, data.clone(), 0o644);
        files.push((name, data));
    }
    let opts = estargz::writer::WriterOptions {
        chunk_size: 4096,
        compression_level: 0,
        legacy: true,
        ..Default::default()
    };
    let mut blob = Vec::new();
    let r = estargz::writer::convert(std::io::Cursor::new(l.tar()), &mut blob, &opts).unwrap();
    Legacy {
        blob,
        digest: r.blob_digest,
        files,
    }
}

fn allow() -> Config {
    Config {
        allow_no_verification: true,
        ..cfg()
    }
}

async fn open(
    src: Arc<dyn RangeSource>,
    digest: &str,
    c: &Config,
) -> Result<Arc<LazyLayer>, Error> {
    LazyLayer::open(
        src,
        digest,
        None,
        c,
        Arc::new(ChunkCache::memory_only(64 << 20)),
        tokio::runtime::Handle::current(),
    )
    .await
}

async fn read_file(layer: &Arc<LazyLayer>, path: &str, len: usize) -> Result<Bytes, Error> {
    let mut ino = 1; // the root
    for c in path.split('/') {
        ino = layer.tree().lookup(ino, c).expect(path);
    }
    layer.read(ino, 0, len as u64).await
}

async fn read_all(layer: &Arc<LazyLayer>, files: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, data) in files {
        out.push(read_file(layer, name, data.len()).await.unwrap().to_vec());
    }
    out
}

async fn wait_check(layer: &LazyLayer) -> BlobCheck {
    for _ in 0..200 {
        match layer.blob_check() {
            BlobCheck::Pending => tokio::time::sleep(Duration::from_millis(20)).await,
            s => return s,
        }
    }
    layer.blob_check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_stargz_is_refused_unless_allowed() {
    let l = legacy(1);
    let src = Arc::new(FakeSource::new(l.blob.clone()));
    match open(src, &l.digest, &cfg()).await {
        Err(Error::Invalid { source, .. }) => {
            assert!(source.to_string().contains("chunkDigest"), "{source}")
        }
        other => panic!("expected Invalid, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_legacy_layer_is_served_then_checked_whole() {
    let l = legacy(2);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::new(&CacheConfig {
            dir: Some(dir.path().to_path_buf()),
            ..CacheConfig::default()
        })
        .unwrap(),
    );
    let src = Arc::new(FakeSource::new(l.blob.clone()));
    let layer = LazyLayer::open(
        src.clone(),
        &l.digest,
        None,
        &allow(),
        cache.clone(),
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    assert_eq!(layer.blob_check(), BlobCheck::Pending);
    let got = read_all(&layer, &l.files).await;
    for ((name, want), got) in l.files.iter().zip(got) {
        assert!(got == *want, "{name}");
    }
    // Every chunk fetched: the check ran by itself and passed.
    assert_eq!(wait_check(&layer).await, BlobCheck::Passed);
    // Nothing unverified went to the disk tier.
    let on_disk = std::fs::read_dir(dir.path().join("chunks"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 0);
    assert!(read_file(&layer, &l.files[1].0, 10).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_is_not_the_layer_stops_the_layer() {
    let l = legacy(3);
    let wrong = e2e::image::sha256_digest(b"another layer");
    let src = Arc::new(FakeSource::new(l.blob.clone()));
    let layer = open(src, &wrong, &allow()).await.unwrap();
    // The read that fetches the last chunk starts the check; if the check
    // ends first, that read already gets the mismatch.
    let (last, first) = l.files.split_last().unwrap();
    read_all(&layer, first).await;
    match read_file(&layer, &last.0, last.1.len()).await {
        Ok(_) | Err(Error::LayerMismatch { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(wait_check(&layer).await, BlobCheck::Failed);
    match read_file(&layer, &l.files[0].0, 5).await {
        Err(Error::LayerMismatch { reason, .. }) => {
            assert!(reason.contains("hashes to"), "{reason}")
        }
        other => panic!("expected LayerMismatch, got {other:?}"),
    }
    assert!(matches!(
        layer.check_blob().await,
        Err(Error::LayerMismatch { .. })
    ));
}

/// Serves another blob's data members until told to stop lying.
struct Lying {
    good: Bytes,
    evil: Bytes,
    lie_below: u64,
    lying: AtomicBool,
}

#[async_trait]
impl RangeSource for Lying {
    fn size(&self) -> u64 {
        self.good.len() as u64
    }

    async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError> {
        let src = if self.lying.load(SeqCst) && off < self.lie_below {
            &self.evil
        } else {
            &self.good
        };
        Ok(src.slice(off as usize..(off + len) as usize))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_served_that_differ_from_the_blob_stop_the_layer() {
    let (good, evil) = (legacy(4), legacy(5));
    assert_eq!(good.blob.len(), evil.blob.len(), "same layout");
    let footer = estargz::parse_footer(&good.blob).unwrap();
    let src = Arc::new(Lying {
        good: good.blob.clone().into(),
        evil: evil.blob.clone().into(),
        lie_below: footer.toc_offset,
        lying: AtomicBool::new(true),
    });
    let layer = open(src.clone(), &good.digest, &allow()).await.unwrap();
    // Unchecked chunks cannot tell: the reader gets the other blob's bytes.
    let (last, first) = good.files.split_last().unwrap();
    let got = read_all(&layer, first).await;
    assert!(got[2] == evil.files[2].1);
    assert_eq!(layer.blob_check(), BlobCheck::Pending);
    // The last chunk comes from the real blob and completes the layer: the
    // check reads the real blob (its digest matches) and finds that what
    // was served is not in it.
    src.lying.store(false, SeqCst);
    // This read starts the check; if the check ends first, the read
    // already gets the mismatch.
    match read_file(&layer, &last.0, last.1.len()).await {
        Ok(_) | Err(Error::LayerMismatch { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(wait_check(&layer).await, BlobCheck::Failed);
    match layer.check_blob().await {
        Err(Error::LayerMismatch { reason, .. }) => {
            assert!(reason.contains("differ from the blob"), "{reason}")
        }
        other => panic!("expected LayerMismatch, got {other:?}"),
    }
    assert!(read_file(&layer, &good.files[2].0, 10).await.is_err());
}

/// Min-chunk-size layers (several small files per gzip member, at inner
/// offsets): reading one file decodes its member's other files too, so
/// the member is fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_member_is_fetched_once_for_all_its_files() {
    let mut l = LayerBuilder::new();
    l.dir("s", 0o755);
    let mut files = Vec::new();
    for i in 0..8u64 {
        let name = format!("s/{i}");
        let data = e2e::image::pseudo_random(500 + 10 * i as usize, 40 + i);
        l.file(&name, data.clone(), 0o644);
        files.push((name, data));
    }
    let opts = estargz::writer::WriterOptions {
        min_chunk_size: 1 << 20,
        ..Default::default()
    };
    let mut blob = Vec::new();
    let r = estargz::writer::convert(std::io::Cursor::new(l.tar()), &mut blob, &opts).unwrap();
    let src = Arc::new(FakeSource::new(blob));
    let layer = LazyLayer::open(
        src.clone(),
        &r.blob_digest,
        Some(&r.toc_digest),
        &cfg(),
        Arc::new(ChunkCache::memory_only(64 << 20)),
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    assert_eq!(layer.blob_check(), BlobCheck::NotNeeded);
    let opened = src.requests();
    let got = read_all(&layer, &files).await;
    for ((name, want), got) in files.iter().zip(got) {
        assert!(got == *want, "{name}");
    }
    assert_eq!(src.requests() - opened, 1, "{:?}", src.ranges.lock());
}
