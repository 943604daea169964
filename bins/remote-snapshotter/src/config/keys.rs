//! Every key of containerd-stargz-grpc's config (and this daemon's own few),
//! with what this daemon does with it. One list for the start-up warnings
//! and the README's table, so the two cannot drift apart.

/// What the daemon does with a config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read and honoured; the text says how.
    Works(&'static str),
    /// Accepted so that a stargz config still loads, but nothing reads it;
    /// the text says what happens instead. Warned about by name at start.
    NoEffect(&'static str),
}

/// A dotted key name (`section.name`) and what it does here.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub support: Support,
}

const fn works(name: &'static str, how: &'static str) -> Key {
    Key {
        name,
        support: Support::Works(how),
    }
}

const fn no_effect(name: &'static str, instead: &'static str) -> Key {
    Key {
        name,
        support: Support::NoEffect(instead),
    }
}

const ONE_CACHE: &str = "one chunk cache serves every layer: a 16 MiB memory tier and a disk \
                         tier under the state directory, bounded by `cache.max_size`";
const KERNEL_TTL: &str = "the kernel caches attributes, names and missing names for 24 h \
                          (layers never change)";
const DOCKER_CREDS: &str =
    "credentials come from the docker config.json (`auths`, `credsStore`, `credHelpers`)";
const IN_PROCESS_FUSE: &str = "FUSE is served by the daemon itself; no separate FUSE manager";

/// Top-level keys first, then by section; in each part what works first.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    works("noprefetch", "skips fetching a layer's prioritized files before its mount is handed out"),
    works("no_background_fetch", "skips fetching the rest of a layer after mounting it"),
    works("prefetch_timeout_sec", "longest wait for the prioritized files; the mount goes on without them"),
    works("max_concurrency", "ranged requests in flight per layer; four times as many registry connections"),
    works("metrics_address", "serves Prometheus metrics there (`--metrics-address` wins)"),
    works("allow_no_verification", "mounts layers that cannot be verified (no TOC digest; legacy stargz without chunk digests), each logged and counted (`unverified_layers_mounted`); once every chunk was fetched the whole blob is checked against the layer digest and a mismatch stops the layer; off, such layers are pulled the ordinary way"),
    works("disable_verification", "as `allow_no_verification`; unlike the reference, digests a layer does carry (TOC, chunks) are still checked"),
    no_effect("debug", "use `--log-level debug`"),
    no_effect("debug_address", "there is no debug endpoint"),
    no_effect("filesystem_cache_type", ONE_CACHE),
    no_effect("fusemanager_address", IN_PROCESS_FUSE),
    no_effect("fusemanager_path", IN_PROCESS_FUSE),
    no_effect("http_cache_chunk_ttl_sec", ONE_CACHE),
    no_effect("http_cache_type", ONE_CACHE),
    no_effect("ipfs", "layers come from OCI registries only"),
    no_effect("log_file_access", "file accesses are not logged"),
    no_effect("metadata_store", "state lives in one database under the state directory"),
    no_effect("no_prometheus", "metrics are served only when `metrics_address` or `--metrics-address` is set"),
    no_effect("prefetch_async_size", "prefetch is bounded by `prefetch_timeout_sec` only"),
    no_effect("prefetch_size", "prefetch covers exactly the layer's prioritized files"),
    no_effect("resolve_result_entry", "layers are not cached by resolve result"),
    no_effect("resolve_result_entry_ttl_sec", "layers are not cached by resolve result"),
    works("blob.fetching_timeout_sec", "bound on a read that needs the network, retries included (EIO after it), and on each request"),
    works("blob.max_retries", "retries of a failed registry request"),
    works("blob.min_wait_msec", "first wait before a retry; it doubles on each retry, up to 5 s"),
    no_effect("blob.check_always", "a mounted layer is not re-checked against the registry; a failing read is retried, then fails"),
    no_effect("blob.chunk_size", "requests follow the TOC's chunks, coalesced and read ahead"),
    no_effect("blob.force_single_range_mode", "multi-range requests are dropped for a registry that answers them wrongly"),
    no_effect("blob.max_wait_msec", "the wait between retries is capped at 5 s"),
    no_effect("blob.prefetch_chunk_size", "prefetch requests are coalesced like on-demand ones"),
    no_effect("blob.valid_interval", "a mounted layer is not re-checked against the registry; a failing read is retried, then fails"),
    works("cache.max_size", "this daemon's own key: upper bound in bytes of the chunk cache on disk"),
    works("cri_keychain.enable_keychain", "serves the CRI image service (the kubelet's `--image-service-endpoint`), forwards it to containerd and uses each `PullImage`'s credentials for that image's repository"),
    works("cri_keychain.image_service_path", "containerd's socket the image service is forwarded to (default `/run/containerd/containerd.sock`)"),
    works("cri_keychain.listen_path", "a socket of its own for the image service; unset, it is served on `--address` beside the snapshots service"),
    works("cri_keychain.persist", "this daemon's own key: keeps the learnt secrets in `ROOT/cri-keychain/credentials.json` (mode 0600, directory 0700), so layers of private images mount again after a restart; default true"),
    works("cri_keychain.credential_ttl_sec", "this daemon's own key: a secret unused for this long is forgotten (default 604800, a week; 0: never); a token past its own `exp` is never sent"),
    no_effect("directory_cache.direct", ONE_CACHE),
    no_effect("directory_cache.fadv_dontneed", ONE_CACHE),
    no_effect("directory_cache.max_cache_fds", ONE_CACHE),
    no_effect("directory_cache.max_lru_cache_entry", ONE_CACHE),
    no_effect("directory_cache.sync_add", ONE_CACHE),
    works("fallback_pull.enable", "this daemon's own key: a layer that cannot be mounted lazily is pulled by the daemon (parallel ranged requests, unpacked while downloading, blob digest and diff ID verified before commit) and answered to containerd as done; false: containerd pulls and unpacks it (default true)"),
    works("fallback_pull.concurrency", "this daemon's own key: ranged requests in flight per layer of a fallback pull (default 4)"),
    works("fallback_pull.request_size_mib", "this daemon's own key: MiB per ranged request of a fallback pull (default 8)"),
    works("fallback_pull.parallel_layers", "this daemon's own key: layers of an image pulled ahead of their Prepare at once, once its first layer fell back (default 3; 0: one layer at a time); layers with a TOC or a seekable index are left to be mounted lazily (metrics `fallback_pull_ahead_started`, `_ahead_used`, `fallback_pull_bytes`)"),
    no_effect("fuse.attr_timeout", KERNEL_TTL),
    no_effect("fuse.entry_timeout", KERNEL_TTL),
    works("fuse.passthrough", "an open of a file whose chunks are all in the disk cache is answered with a whole-file copy under `cache/files` that the kernel reads directly (FUSE passthrough, kernel 6.9 or later; else reads go through the daemon as without it). Off by default: it makes each layer mount a stacked filesystem, so overlayfs inside a container (docker-in-docker) passes the kernel's stacking limit; the copies are not counted in `cache.max_size`"),
    works("fuse.handover_timeout_sec", "this daemon's own key: after a SIGTERM or a crash, how long the fd holder keeps the mounts' FUSE connections for a next daemon (default 600; 0: forever). Readers wait meanwhile; after it the holder closes the connections (their readers get an error instead of hanging), detaches the dead mounts and exits"),
    no_effect("fuse.merge_buffer_size", "passthrough copies a file from its verified cached chunks once; no merge buffer"),
    no_effect("fuse.merge_worker_count", "passthrough copies a file from its verified cached chunks once; no merge workers"),
    no_effect("fuse.negative_timeout", KERNEL_TTL),
    works("gzindex.dir", "this daemon's own key: directory of seekable indexes of plain gzip layers (`<layer hex>.gzindex`, written by `rsnap index --out`), looked at first when a layer has no TOC; default `ROOT/gzindex`"),
    works("gzindex.registry_lookup", "this daemon's own key: when a layer has no TOC and no local index, look for one among the image manifest's OCI referrers (`rsnap index` pushes it there; the `sha256-<hex>` tag on registries without the referrers API); default true"),
    no_effect("fuse_manager.address", IN_PROCESS_FUSE),
    no_effect("fuse_manager.enable", IN_PROCESS_FUSE),
    no_effect("fuse_manager.path", IN_PROCESS_FUSE),
    no_effect("kubeconfig_keychain.enable_keychain", DOCKER_CREDS),
    no_effect("kubeconfig_keychain.kubeconfig_path", DOCKER_CREDS),
    works("profile.record", "this daemon's own key: records, per image, the files containers open in their first seconds (paths and layer digests, no contents) into `ROOT/profiles/`, for `rsnap profile export` and `rsnap optimize --reuse-record`; default false"),
    works("profile.window_sec", "this daemon's own key: how long after an image's first open files are recorded (default 10)"),
    works("profile.max_files", "this daemon's own key: at most this many files recorded per image (default 10000; the profile notes a truncation)"),
    works("resolver", "registry hosts, as in the `resolver.*` rows; any other key under it is refused"),
    works("resolver.host.HOST.header", "extra request headers for the registry itself"),
    works("resolver.host.HOST.insecure", "plain HTTP to the registry itself"),
    works("resolver.host.HOST.request_timeout_sec", "time to response headers from the registry itself"),
    works("resolver.host.HOST.mirrors.header", "extra request headers for this mirror"),
    works("resolver.host.HOST.mirrors.host", "a mirror, tried in order before the registry for pulls"),
    works("resolver.host.HOST.mirrors.insecure", "plain HTTP to this mirror"),
    works("resolver.host.HOST.mirrors.request_timeout_sec", "time to response headers from this mirror"),
    works("resolver.host.HOST.ca", "this daemon's own key: extra CA certificates (PEM path or list) for the registry"),
    works("resolver.host.HOST.skip_verify", "this daemon's own key: HTTPS to the registry without certificate checks"),
    works("resolver.host.HOST.mirrors.ca", "this daemon's own key: extra CA certificates for this mirror"),
    works("resolver.host.HOST.mirrors.skip_verify", "this daemon's own key: HTTPS to this mirror without certificate checks"),
    no_effect("snapshotter.allow_invalid_mounts_on_restart", "always so here: a layer that cannot be mounted at start does not fail the start; it is mounted again on first use"),
];

/// The entry for a dotted key name as [`super::present_keys`] spells it.
pub fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Whether `name` is a table whose keys [`KEYS`] lists one by one.
pub fn is_section(name: &str) -> bool {
    KEYS.iter().any(|k| {
        k.name
            .strip_prefix(name)
            .is_some_and(|r| r.starts_with('.'))
    })
}

/// The README's table of config keys, generated from [`KEYS`].
#[cfg(test)]
pub fn markdown_table() -> String {
    let mut out =
        String::from("| key | here | what it does, or what happens instead |\n|---|---|---|\n");
    for k in KEYS {
        let (here, text) = match k.support {
            Support::Works(t) => ("works", t),
            Support::NoEffect(t) => ("no effect", t),
        };
        out.push_str(&format!("| `{}` | {here} | {text} |\n", k.name));
    }
    out
}
