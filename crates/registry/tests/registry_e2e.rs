//! The client against a real docker-registry on 127.0.0.1: anonymous, behind
//! misbehaving fronts, with htpasswd basic auth and with token auth.

use bytes::Bytes;
use e2e::authfront::{Front, FrontOptions, MultiRange, TokenRequest, TokenServer};
use e2e::registry::{Registry, RegistryOptions};
use futures::StreamExt;
use registry::{
    BlobPush, Client, ClientConfig, Credential, Digest, ErrorKind, Platform, PushOptions, Reference,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn config() -> ClientConfig {
    ClientConfig {
        retry_base: Duration::from_millis(5),
        ..Default::default()
    }
}

fn client() -> Client {
    Client::new(config()).unwrap()
}

fn repo(host: &str, name: &str) -> Reference {
    Reference::new(host, name).unwrap()
}

/// Push a blob and return its digest.
async fn put(c: &Client, r: &Reference, b: &[u8]) -> String {
    let d = Digest::sha256_of(b);
    c.push_blob(r, &d, Bytes::copy_from_slice(b)).await.unwrap();
    d
}

fn image_config(arch: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Cmd": ["/bin/sh"]}
    }))
    .unwrap()
}

fn manifest_json(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "size": b.len(), "digest": Digest::sha256_of(b)});
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Ranges that exercise edges: first byte, last byte, overlapping, unsorted,
/// adjacent, empty.
fn ranges(size: u64) -> Vec<(u64, u64)> {
    vec![
        (size - 1, 1),
        (0, 1),
        (1000, 5000),
        (3000, 10),
        (70_000, 100_000),
        (170_000, 1),
        (5, 0),
        (size / 2, 4096),
    ]
}

async fn check_reads(c: &Client, r: &Reference, blob: &[u8]) {
    let d = Digest::sha256_of(blob);
    let br = c.blob_reader(r, &d, None).await.unwrap();
    assert_eq!(br.size(), blob.len() as u64);
    for (o, l) in ranges(br.size()) {
        assert_eq!(
            &br.read_at(o, l).await.unwrap()[..],
            &blob[o as usize..(o + l) as usize],
            "read_at {o}+{l}"
        );
    }
    let rs = ranges(br.size());
    let got = br.read_ranges(&rs).await.unwrap();
    for ((o, l), g) in rs.iter().zip(got) {
        assert_eq!(
            &g[..],
            &blob[*o as usize..(*o + *l) as usize],
            "read_ranges {o}+{l}"
        );
    }
    assert!(br.read_at(br.size() - 1, 2).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_push_read_resolve() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let c = client();
    let a = repo(&reg.host(), "test/a");
    let blob = data(3 << 20, 1);
    let d = Digest::sha256_of(&blob);
    assert_eq!(
        c.push_blob(&a, &d, Bytes::from(blob.clone()))
            .await
            .unwrap(),
        BlobPush::Uploaded
    );
    assert_eq!(
        c.push_blob(&a, &d, Bytes::from(blob.clone()))
            .await
            .unwrap(),
        BlobPush::AlreadyThere
    );
    // A wrong digest is refused before anything is sent.
    let e = c
        .push_blob(&a, &d, Bytes::from_static(b"other"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch);

    // Chunked upload, and a cross-repository mount.
    let blob2 = data(1 << 20, 2);
    let d2 = Digest::sha256_of(&blob2);
    let opts = PushOptions {
        chunk_size: Some(300_000),
        ..Default::default()
    };
    assert_eq!(
        c.push_blob_with(&a, &d2, Bytes::from(blob2.clone()), &opts)
            .await
            .unwrap(),
        BlobPush::Uploaded
    );
    assert_eq!(
        &c.fetch_blob_bytes(&a, &d2, 2 << 20).await.unwrap()[..],
        &blob2[..]
    );
    let e = c.fetch_blob_bytes(&a, &d2, 1000).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    let b = repo(&reg.host(), "other/b");
    let opts = PushOptions {
        mount_from: vec!["test/a".into()],
        ..Default::default()
    };
    assert_eq!(
        c.push_blob_with(&b, &d2, Bytes::from(blob2.clone()), &opts)
            .await
            .unwrap(),
        BlobPush::Mounted
    );
    assert_eq!(c.blob_size(&b, &d2).await.unwrap(), blob2.len() as u64);

    // From a file, in chunks, without holding it in memory.
    let blob3 = data(2_500_000, 10);
    let d3 = Digest::sha256_of(&blob3);
    let f3 = scratch.path().join("blob3");
    std::fs::write(&f3, &blob3).unwrap();
    let opts = PushOptions {
        chunk_size: Some(1 << 20),
        ..Default::default()
    };
    assert_eq!(
        c.push_blob_file(&a, &d3, &f3, &opts).await.unwrap(),
        BlobPush::Uploaded
    );
    assert_eq!(
        &c.fetch_blob_bytes(&a, &d3, 4 << 20).await.unwrap()[..],
        &blob3[..]
    );
    let wrong = Digest::sha256_of(b"not the file");
    let e = c.push_blob_file(&a, &wrong, &f3, &opts).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch);
    assert_eq!(
        c.blob_size(&a, &wrong).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    check_reads(&c, &a, &blob).await;

    // Whole-blob stream, verified at the end.
    let mut s = c.fetch_blob_stream(&a, &d).await.unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = s.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, blob);

    // An image: config + manifest under a tag, then an index of two platforms.
    let cfg = image_config("amd64");
    put(&c, &a, &cfg).await;
    let man = manifest_json(&cfg, &[&blob]);
    let tagged = Reference::parse(&format!("{}/test/a:v1", reg.host())).unwrap();
    let md = c
        .push_manifest(
            &tagged,
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(man.clone()),
        )
        .await
        .unwrap();
    assert_eq!(md, Digest::sha256_of(&man));
    let res = c.resolve(&tagged).await.unwrap();
    assert_eq!(
        (res.digest.as_str(), &res.bytes[..]),
        (md.as_str(), &man[..])
    );
    assert_eq!(res.media_type, "application/vnd.oci.image.manifest.v1+json");
    let m = c.fetch_manifest(&tagged.with_digest(&md)).await.unwrap();
    assert_eq!(m.manifest.layers()[0].digest().to_string(), d);
    let (_, parsed) = c
        .fetch_config(&a, m.manifest.config().digest().as_ref())
        .await
        .unwrap();
    assert_eq!(parsed.architecture().to_string(), "amd64");

    let cfg_arm = image_config("arm64");
    put(&c, &a, &cfg_arm).await;
    let man_arm = manifest_json(&cfg_arm, &[&blob2]);
    let arm_digest = c
        .push_manifest(
            &a.with_tag("arm"),
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(man_arm.clone()),
        )
        .await
        .unwrap();
    let entry = |m: &[u8], arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": m.len(),
            "digest": Digest::sha256_of(m), "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&man, "amd64"), entry(&man_arm, "arm64")]}))
    .unwrap();
    let multi = a.with_tag("multi");
    c.push_manifest(
        &multi,
        "application/vnd.oci.image.index.v1+json",
        Bytes::from(index.clone()),
    )
    .await
    .unwrap();
    let m = c
        .fetch_manifest_for(&multi, &Platform::parse("linux/arm64").unwrap())
        .await
        .unwrap();
    assert_eq!(m.resolved.digest, arm_digest);
    assert_eq!(m.index.as_ref().unwrap().digest, Digest::sha256_of(&index));
    let e = c
        .fetch_manifest_for(&multi, &Platform::parse("linux/s390x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Absent things are NotFound; a digest reference is verified.
    assert_eq!(
        c.resolve(&a.with_tag("nope")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        c.blob_size(&a, &Digest::sha256_of(b"absent"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    // Multi-range is really used against the registry (through a recording front).
    let front = Front::start(reg.port, FrontOptions::default());
    let fa = repo(&front.host(), "test/a");
    check_reads(&c, &fa, &blob).await;
    let multi_seen = front
        .seen()
        .iter()
        .filter(|s| s.range.as_deref().is_some_and(|r| r.contains(',')))
        .count();
    assert_eq!(multi_seen, 1, "{:?}", front.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronts_that_misbehave() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let c = client();
    let blob = data(600_000, 3);
    let d = put(&c, &repo(&reg.host(), "q/r"), &blob).await;

    // 200 + whole blob for every Range.
    let f = Front::start(
        reg.port,
        FrontOptions {
            ignore_range: true,
            ..Default::default()
        },
    );
    check_reads(&client(), &repo(&f.host(), "q/r"), &blob).await;
    assert!(f
        .seen()
        .iter()
        .all(|s| s.status == 200 || s.method == "HEAD"));

    // 416 for multi-range: fall back to single ranges, and remember it.
    let f = Front::start(
        reg.port,
        FrontOptions {
            multi_range: MultiRange::Reject,
            ..Default::default()
        },
    );
    let c2 = client();
    let r = repo(&f.host(), "q/r");
    check_reads(&c2, &r, &blob).await;
    check_reads(&c2, &r, &blob).await;
    let multi: Vec<_> = f
        .seen()
        .into_iter()
        .filter(|s| s.range.as_deref().is_some_and(|r| r.contains(',')))
        .collect();
    assert_eq!(multi.len(), 1, "multi-range asked again after a refusal");
    assert_eq!(multi[0].status, 416);

    // Whole blob for multi-range only.
    let f = Front::start(
        reg.port,
        FrontOptions {
            multi_range: MultiRange::Whole,
            ..Default::default()
        },
    );
    check_reads(&client(), &repo(&f.host(), "q/r"), &blob).await;

    // 503s are retried.
    let f = Front::start(
        reg.port,
        FrontOptions {
            fail_first: 2,
            ..Default::default()
        },
    );
    let br = client()
        .blob_reader(&repo(&f.host(), "q/r"), &d, Some(blob.len() as u64))
        .await
        .unwrap();
    assert_eq!(&br.read_at(10, 10).await.unwrap()[..], &blob[10..20]);
    assert_eq!(f.seen().len(), 3);
    // ... but not forever.
    let f = Front::start(
        reg.port,
        FrontOptions {
            fail_first: 100,
            ..Default::default()
        },
    );
    let br = client()
        .blob_reader(&repo(&f.host(), "q/r"), &d, Some(blob.len() as u64))
        .await
        .unwrap();
    assert_eq!(
        br.read_at(0, 1).await.unwrap_err().kind(),
        ErrorKind::Unreachable
    );
    assert_eq!(f.seen().len(), 4);

    // Corrupted bodies are never handed out as verified content.
    let f = Front::start(
        reg.port,
        FrontOptions {
            corrupt_blobs: true,
            ..Default::default()
        },
    );
    let fr = repo(&f.host(), "q/r");
    assert_eq!(
        client()
            .fetch_blob_bytes(&fr, &d, 1 << 20)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::DigestMismatch
    );
    let mut s = client().fetch_blob_stream(&fr, &d).await.unwrap();
    let mut last = None;
    while let Some(item) = s.next().await {
        last = Some(item);
    }
    assert_eq!(last.unwrap().unwrap_err().kind(), ErrorKind::DigestMismatch);

    // A 206 whose Content-Range is not what was asked is refused.
    let f = Front::start(
        reg.port,
        FrontOptions {
            shift_content_range: true,
            ..Default::default()
        },
    );
    let br = client()
        .blob_reader(&repo(&f.host(), "q/r"), &d, Some(blob.len() as u64))
        .await
        .unwrap();
    assert_eq!(
        br.read_at(10, 100).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );

    // A dead endpoint is Unreachable.
    let dead = repo(&format!("127.0.0.1:{}", e2e::free_port()), "q/r");
    let cfg = ClientConfig {
        retries: 1,
        ..config()
    };
    let e = Client::new(cfg)
        .unwrap()
        .blob_size(&dead, &d)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_stalls() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let blob = data(600_000, 8);
    let d = put(&client(), &repo(&reg.host(), "s/t"), &blob).await;

    // 429 with Retry-After: 1 is waited out, twice.
    let f = Front::start(
        reg.port,
        FrontOptions {
            throttle_first: 2,
            ..Default::default()
        },
    );
    let br = client()
        .blob_reader(&repo(&f.host(), "s/t"), &d, Some(blob.len() as u64))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(&br.read_at(1, 3).await.unwrap()[..], &blob[1..4]);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "Retry-After not honoured: {:?}",
        t.elapsed()
    );
    assert_eq!(f.seen().len(), 3);

    // A body that stops arriving is abandoned after the stall timeout.
    let f = Front::start(
        reg.port,
        FrontOptions {
            stall_blobs: Some(Duration::from_secs(20)),
            ..Default::default()
        },
    );
    let cfg = ClientConfig {
        stall_timeout: Duration::from_secs(1),
        retries: 1,
        ..config()
    };
    let c = Client::new(cfg).unwrap();
    let br = c
        .blob_reader(&repo(&f.host(), "s/t"), &d, Some(blob.len() as u64))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let e = br.read_at(0, 500_000).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stall noticed after {:?}",
        t.elapsed()
    );
    let e = c
        .fetch_blob_bytes(&repo(&f.host(), "s/t"), &d, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");

    // A whole-blob stream that stalls is resumed with a Range from where it broke.
    let f = Front::start(
        reg.port,
        FrontOptions {
            stall_whole_blobs: Some(Duration::from_secs(20)),
            ..Default::default()
        },
    );
    let mut s = c
        .fetch_blob_stream(&repo(&f.host(), "s/t"), &d)
        .await
        .unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = s.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, blob);
    assert!(
        f.seen()
            .iter()
            .any(|s| s.range.as_deref().is_some_and(|r| r.ends_with('-'))),
        "{:?}",
        f.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_tried_first_then_origin() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let origin = Registry::start(scratch.path());
    let mirror = Registry::start(scratch.path());
    let c = client();
    let only_origin = data(10_000, 4);
    let on_both = data(20_000, 5);
    let d1 = put(&c, &repo(&origin.host(), "m/x"), &only_origin).await;
    let d2 = put(&c, &repo(&origin.host(), "m/x"), &on_both).await;
    put(&c, &repo(&mirror.host(), "m/x"), &on_both).await;
    let fm = Front::start(mirror.port, FrontOptions::default());
    let fo = Front::start(origin.port, FrontOptions::default());
    let hosts: registry::HostsConfig = toml::from_str(&format!(
        "[[host.\"{}\".mirrors]]\nhost = \"{}\"\nheader = {{ \"X-Test\" = \"1\" }}\n",
        fo.host(),
        fm.host()
    ))
    .unwrap();
    let c = Client::new(ClientConfig { hosts, ..config() }).unwrap();
    let r = repo(&fo.host(), "m/x");
    let br = c.blob_reader(&r, &d2, None).await.unwrap();
    assert_eq!(&br.read_at(0, 100).await.unwrap()[..], &on_both[..100]);
    assert!(
        fo.seen().is_empty(),
        "origin asked although the mirror had it"
    );
    let br = c.blob_reader(&r, &d1, None).await.unwrap();
    assert_eq!(&br.read_at(5, 100).await.unwrap()[..], &only_origin[5..105]);
    assert!(!fo.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_redirects() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().join("shared-data");
    let reg = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            htpasswd: Some(e2e::registry::htpasswd(scratch.path(), "alice", "secret")),
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        },
    );
    // The same storage served anonymously: stands in for a blob CDN.
    let anon = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            data_dir: Some(data_dir),
            ..Default::default()
        },
    );
    let r = repo(&reg.host(), "p/q");
    let blob = data(400_000, 6);
    let d = Digest::sha256_of(&blob);

    let e = client()
        .push_blob(&r, &d, Bytes::from(blob.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    let creds = HashMap::from([(
        reg.host(),
        Credential::Basic {
            username: "alice".into(),
            password: "nope".into(),
        },
    )]);
    let e = Client::new(ClientConfig {
        credentials: creds,
        ..config()
    })
    .unwrap()
    .blob_size(&r, &d)
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);

    // Credentials from a docker config.json.
    let dc = e2e::registry::docker_config(scratch.path(), &reg.host(), "alice", "secret");
    let fronted = |p: u16| format!("127.0.0.1:{p}");
    let c2 = Client::new(ClientConfig {
        docker_config_dir: Some(dc.clone()),
        ..config()
    })
    .unwrap();
    assert_eq!(
        c2.push_blob(&r, &d, Bytes::from(blob.clone()))
            .await
            .unwrap(),
        BlobPush::Uploaded
    );
    check_reads(&c2, &r, &blob).await;

    // Through a front on another port the credentials are the front's host's.
    let front_creds = |port: u16| {
        HashMap::from([(
            fronted(port),
            Credential::Basic {
                username: "alice".into(),
                password: "secret".into(),
            },
        )])
    };
    let probe = Front::start(reg.port, FrontOptions::default());
    let c3 = Client::new(ClientConfig {
        credentials: front_creds(probe.port),
        ..config()
    })
    .unwrap();
    assert_eq!(
        c3.blob_size(&repo(&probe.host(), "p/q"), &d).await.unwrap(),
        blob.len() as u64
    );
    // The registry's credentials are not the front's.
    assert_eq!(
        c2.blob_size(&repo(&probe.host(), "p/q"), &d)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unauthorized
    );

    // A 307 to another port: no Authorization there.
    redirect_case(reg.port, anon.port, &blob, &d, front_creds).await;
}

async fn redirect_case(
    reg_port: u16,
    anon_port: u16,
    blob: &[u8],
    d: &str,
    creds_for: impl Fn(u16) -> HashMap<String, Credential>,
) {
    let other = Front::start(anon_port, FrontOptions::default());
    let front = Front::start(
        reg_port,
        FrontOptions {
            redirect_blobs_to: Some(other.port),
            ..Default::default()
        },
    );
    let c = Client::new(ClientConfig {
        credentials: creds_for(front.port),
        ..config()
    })
    .unwrap();
    let br = c
        .blob_reader(&repo(&front.host(), "p/q"), d, None)
        .await
        .unwrap();
    assert_eq!(&br.read_at(7, 1000).await.unwrap()[..], &blob[7..1007]);
    assert_eq!(
        &c.fetch_blob_bytes(&repo(&front.host(), "p/q"), d, 1 << 20)
            .await
            .unwrap()[..],
        blob
    );
    assert!(
        front.seen().iter().any(|s| s.authorization.is_some()),
        "{:?}",
        front.seen()
    );
    assert!(!other.seen().is_empty());
    for s in other.seen() {
        assert!(
            s.authorization.is_none(),
            "credentials leaked to the redirect target: {s:?}"
        );
    }
}

/// Token auth: a key and self-signed certificate the registry trusts, and a
/// token server that signs JWTs with them.
struct Tokens {
    server: TokenServer,
    bundle: std::path::PathBuf,
    ctl: Arc<TokenControl>,
}

/// Knobs the test turns while the token server runs.
#[derive(Default)]
struct TokenControl {
    /// Sign this many next tokens already expired (past the registry's leeway).
    expired_next: AtomicUsize,
    /// The `expires_in` the server announces.
    expires_in: AtomicU64,
}

const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-issuer";

fn token_server(dir: &std::path::Path) -> Tokens {
    let ctl = Arc::new(TokenControl {
        expires_in: AtomicU64::new(300),
        ..Default::default()
    });
    let ctl2 = ctl.clone();
    let key = e2e::authfront::TokenKey::create(dir);
    let bundle = key.bundle.clone();
    let issuer = move |req: &TokenRequest| -> Result<(String, u64), u16> {
        let user = match (&req.basic, req.param("grant_type")) {
            (None, Some("refresh_token")) if req.method == "POST" => {
                match req.param("refresh_token") {
                    Some("rt-alice") => Some("alice".to_string()),
                    _ => return Err(401),
                }
            }
            (Some((u, p)), _) if u == "alice" && p == "secret" => Some(u.clone()),
            (Some(_), _) => return Err(401),
            (None, _) => None,
        };
        let access: Vec<_> = req
            .scopes()
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter_map(|s| {
                let mut it = s.splitn(3, ':');
                let (t, name, actions) = (it.next()?, it.next()?, it.next()?);
                // Anonymous users may pull only from "public/".
                let actions: Vec<&str> = actions
                    .split(',')
                    .filter(|a| user.is_some() || (*a == "pull" && name.starts_with("public/")))
                    .collect();
                Some(serde_json::json!({"type": t, "name": name, "actions": actions}))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = ctl2
            .expired_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        // distribution accepts tokens up to 60 s past their expiry.
        let exp = if expired { now - 300 } else { now + 600 };
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user.clone().unwrap_or_default(), "aud": SERVICE,
            "exp": exp, "nbf": now - 1000, "iat": now, "jti": format!("{now}-{}", rand_id()),
            "access": access,
        });
        Ok((key.sign(&claims)?, ctl2.expires_in.load(Ordering::SeqCst)))
    };
    Tokens {
        server: TokenServer::start(Arc::new(issuer)),
        bundle,
        ctl,
    }
}

fn rand_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_flow_refresh_and_redirects() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let tokens = token_server(scratch.path());
    let data_dir = scratch.path().join("shared-data");
    let reg = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            token: Some((
                tokens.server.realm(),
                SERVICE.into(),
                ISSUER.into(),
                tokens.bundle.clone(),
            )),
            data_dir: Some(data_dir.clone()),
            ..Default::default()
        },
    );
    let anon_reg = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            data_dir: Some(data_dir),
            ..Default::default()
        },
    );
    let alice = |host: String| {
        let creds = HashMap::from([(
            host,
            Credential::Basic {
                username: "alice".into(),
                password: "secret".into(),
            },
        )]);
        Client::new(ClientConfig {
            credentials: creds,
            ..config()
        })
        .unwrap()
    };
    let c = alice(reg.host());
    let blob = data(400_000, 7);
    let r = repo(&reg.host(), "p/q");
    let d = Digest::sha256_of(&blob);
    assert_eq!(
        c.push_blob(&r, &d, Bytes::from(blob.clone()))
            .await
            .unwrap(),
        BlobPush::Uploaded
    );
    let cfg = image_config("amd64");
    put(&c, &r, &cfg).await;
    let man = manifest_json(&cfg, &[&blob]);
    c.push_manifest(
        &r.with_tag("t"),
        "application/vnd.oci.image.manifest.v1+json",
        Bytes::from(man.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        &c.resolve(&r.with_tag("t")).await.unwrap().bytes[..],
        &man[..]
    );
    check_reads(&c, &r, &blob).await;
    let seen = tokens.server.seen();
    assert!(seen
        .iter()
        .all(|t| t.basic == Some(("alice".into(), "secret".into()))));
    assert!(seen.iter().all(|t| t.param("service") == Some(SERVICE)));
    // Tokens are cached per scope: a handful of token requests for many reads.
    assert!(seen.len() <= 4, "{} token requests", seen.len());

    // A cached token the registry rejects (expired early) is dropped on the
    // 401 and a new one fetched: the read still succeeds.
    let c_exp = alice(reg.host());
    tokens.ctl.expired_next.store(1, Ordering::SeqCst);
    let before = tokens.server.seen().len();
    let br = c_exp
        .blob_reader(&r, &d, Some(blob.len() as u64))
        .await
        .unwrap();
    assert_eq!(&br.read_at(100, 100).await.unwrap()[..], &blob[100..200]);
    assert_eq!(
        tokens.server.seen().len(),
        before + 2,
        "expected a refetch after the 401"
    );
    assert_eq!(tokens.ctl.expired_next.load(Ordering::SeqCst), 0);

    // A short `expires_in` makes the client refresh before using the token again.
    tokens.ctl.expires_in.store(1, Ordering::SeqCst);
    let c_short = alice(reg.host());
    let br = c_short
        .blob_reader(&r, &d, Some(blob.len() as u64))
        .await
        .unwrap();
    br.read_at(0, 10).await.unwrap();
    br.read_at(0, 10).await.unwrap();
    let before = tokens.server.seen().len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    br.read_at(0, 10).await.unwrap();
    assert_eq!(
        tokens.server.seen().len(),
        before + 1,
        "no refresh after expires_in"
    );
    tokens.ctl.expires_in.store(300, Ordering::SeqCst);

    // An identity token (OAuth2 refresh token) from config.json is POSTed to the realm.
    let dc = scratch.path().join("docker");
    std::fs::create_dir_all(&dc).unwrap();
    let cfg_json = serde_json::json!({"auths": {reg.host(): {"identitytoken": "rt-alice"}}});
    std::fs::write(dc.join("config.json"), cfg_json.to_string()).unwrap();
    let c_id = Client::new(ClientConfig {
        docker_config_dir: Some(dc),
        ..config()
    })
    .unwrap();
    assert_eq!(
        &c_id.resolve(&r.with_tag("t")).await.unwrap().bytes[..],
        &man[..]
    );
    let last = tokens.server.seen().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.param("refresh_token")),
        ("POST", Some("rt-alice"))
    );

    // Anonymous: a token with no access, so Unauthorized, not a loop.
    let anon = client();
    assert_eq!(
        anon.resolve(&r.with_tag("t")).await.unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    // Wrong password: the token server says 401.
    let creds = HashMap::from([(
        reg.host(),
        Credential::Basic {
            username: "alice".into(),
            password: "x".into(),
        },
    )]);
    let bad = Client::new(ClientConfig {
        credentials: creds,
        ..config()
    })
    .unwrap();
    assert_eq!(
        bad.resolve(&r.with_tag("t")).await.unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    // Anonymous pulls from a public repository work (anonymous token).
    let pubr = repo(&reg.host(), "public/x");
    let opts = PushOptions {
        mount_from: vec!["p/q".into()],
        ..Default::default()
    };
    assert_eq!(
        c.push_blob_with(&pubr, &d, Bytes::from(blob.clone()), &opts)
            .await
            .unwrap(),
        BlobPush::Mounted
    );
    let br = anon.blob_reader(&pubr, &d, None).await.unwrap();
    assert_eq!(&br.read_at(0, 10).await.unwrap()[..], &blob[..10]);
    assert!(tokens.server.seen().iter().any(|t| t.basic.is_none()));

    // A 307 to another host: the bearer token is not sent there.
    let other = Front::start(anon_reg.port, FrontOptions::default());
    let front = Front::start(
        reg.port,
        FrontOptions {
            redirect_blobs_to: Some(other.port),
            ..Default::default()
        },
    );
    let c = alice(front.host());
    let fr = repo(&front.host(), "p/q");
    let br = c.blob_reader(&fr, &d, None).await.unwrap();
    assert_eq!(&br.read_at(7, 1000).await.unwrap()[..], &blob[7..1007]);
    assert_eq!(
        &c.fetch_blob_bytes(&fr, &d, 1 << 20).await.unwrap()[..],
        &blob[..]
    );
    assert!(front.seen().iter().any(|s| s
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Bearer "))));
    assert!(!other.seen().is_empty());
    for s in other.seen() {
        assert!(
            s.authorization.is_none(),
            "token leaked to the redirect target: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_host_ca_speaks_http2() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let ca = e2e::tls::TestCa::create(dir);
    let port = e2e::free_port();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
        ca.cert.display(),
        ca.key.display(),
        d = dir.display()
    );
    std::fs::write(dir.join("config.yml"), cfg).unwrap();
    let mut cmd = std::process::Command::new("docker-registry");
    cmd.arg("serve").arg(dir.join("config.yml"));
    let log = dir.join("registry.log");
    let _svc = e2e::process::Service::spawn("docker-registry-tls", cmd, &log).unwrap();
    assert!(e2e::process::wait_until(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));

    let host = format!("127.0.0.1:{port}");
    let r = repo(&host, "tls/x");
    let blob = data(300_000, 9);
    let d = Digest::sha256_of(&blob);
    // With another CA: the certificate is not trusted, so Unreachable.
    e2e::tls::TestCa::unrelated_ca(dir);
    let hosts_with = |ca: &str| -> registry::HostsConfig {
        toml::from_str(&format!(
            "[host.\"{host}\"]\nca = \"{}\"\n",
            dir.join(ca).display()
        ))
        .unwrap()
    };
    let hosts = hosts_with("ca.pem");
    let e = Client::new(ClientConfig {
        hosts: hosts_with("other-ca.pem"),
        retries: 0,
        ..config()
    })
    .unwrap()
    .push_blob(&r, &d, Bytes::from(blob.clone()))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    let c = Client::new(ClientConfig { hosts, ..config() }).unwrap();
    assert_eq!(
        c.push_blob(&r, &d, Bytes::from(blob.clone()))
            .await
            .unwrap(),
        BlobPush::Uploaded
    );
    check_reads(&c, &r, &blob).await;
    // skip_verify (per host in the hosts config, or asked for by name):
    // HTTPS that accepts the unknown certificate.
    let skip: registry::HostsConfig =
        toml::from_str(&format!("[host.\"{host}\"]\nskip_verify = true\n")).unwrap();
    for cfg in [
        ClientConfig {
            hosts: skip,
            ..config()
        },
        ClientConfig {
            skip_verify_hosts: vec![host.clone()],
            ..config()
        },
    ] {
        check_reads(&Client::new(cfg).unwrap(), &r, &blob).await;
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("HTTP/2.0"),
        "no HTTP/2 request in the registry log"
    );
}

/// A blob's size and last bytes in one suffix-range request (no HEAD), and
/// a clean fallback where the host does not serve suffix ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_size_in_one_request() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let blob = data(300_000, 9);
    let d = put(&client(), &repo(&reg.host(), "t/u"), &blob).await;
    let n = blob.len();

    let f = Front::start(reg.port, FrontOptions::default());
    let r = repo(&f.host(), "t/u");
    let (br, tail) = client().blob_reader_tail(&r, &d, 1000).await.unwrap();
    assert_eq!(br.size(), n as u64);
    assert_eq!(&tail[..], &blob[n - 1000..]);
    let seen = f.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].method.as_str(), seen[0].status), ("GET", 206));
    assert_eq!(seen[0].range.as_deref(), Some("bytes=-1000"));
    // The reader works on: its ranges are checked against the learned size.
    assert_eq!(&br.read_at(5, 10).await.unwrap()[..], &blob[5..15]);
    assert!(br.read_at(n as u64 - 1, 2).await.is_err());

    // A tail longer than the blob is the whole blob.
    let (br, tail) = client().blob_reader_tail(&r, &d, 1 << 20).await.unwrap();
    assert_eq!((br.size(), &tail[..]), (n as u64, &blob[..]));

    // A host that ignores Range: size from a HEAD, tail from a ranged read.
    let f = Front::start(
        reg.port,
        FrontOptions {
            ignore_range: true,
            ..Default::default()
        },
    );
    let (br, tail) = client()
        .blob_reader_tail(&repo(&f.host(), "t/u"), &d, 1000)
        .await
        .unwrap();
    assert_eq!((br.size(), &tail[..]), (n as u64, &blob[n - 1000..]));
    assert!(f.seen().iter().any(|s| s.method == "HEAD"));

    // A Content-Range that is not the suffix asked for is refused.
    let f = Front::start(
        reg.port,
        FrontOptions {
            shift_content_range: true,
            ..Default::default()
        },
    );
    let e = client()
        .blob_reader_tail(&repo(&f.host(), "t/u"), &d, 1000)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
}
