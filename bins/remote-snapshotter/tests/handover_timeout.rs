//! Bounded waits when no daemon comes back (real registry, containerd,
//! runc, FUSE): after a SIGTERM the fd holder keeps the mounts and readers
//! wait for the next daemon; with none, the holder gives up after
//! `[fuse] handover_timeout_sec`: every waiting reader gets an error (none
//! hangs), the dead mounts are detached, the holder exits, and the next
//! daemon counts what was given up and serves the image again.
//!
//! The time readers waited is printed as a `FIGURE` line (docs/reliability.md).

mod common;

use common::Stack;
use e2e::containerd::{unique_id, Containerd, NAMESPACE};
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, write_oci_layout, LayerBuilder};
use e2e::process::wait_until;
use e2e::registry::{skopeo_push, Registry};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["docker-registry", "containerd", "ctr", "runc", "skopeo"];
const GIVE_UP_SEC: u64 = 4;

/// FUSE mount points under `dir` (from the mount table: never touched,
/// they may have no server).
fn fuse_mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo::read_self()
        .expect("mountinfo")
        .into_iter()
        .filter(|m| m.fs_type.to_string_lossy().starts_with("fuse"))
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[test]
fn readers_get_an_error_when_no_daemon_comes_back_within_the_handover_timeout() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let mut st = Stack {
        ctrd: None,
        daemon: None,
        scratch: tempfile::tempdir().unwrap(),
        metrics: None,
    };
    let s = st.scratch.path().to_path_buf();
    let (src, dst) = (s.join("src"), s.join("dst"));
    let mut data = LayerBuilder::new();
    data.dir("d", 0o755)
        .file("d/a.bin", pseudo_random(300_000, 71), 0o644);
    write_oci_layout(
        &src,
        "v1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    let reg = Registry::start(&s);
    let image = format!("{}/r/giveup:v1", reg.host());
    skopeo_push(&dst, "v1", &image);
    std::fs::write(
        s.join("config.toml"),
        format!(
            "noprefetch = true\nno_background_fetch = true\n[fuse]\nhandover_timeout_sec = {GIVE_UP_SEC}\n"
        ),
    )
    .unwrap();
    let (daemon, _metrics) = common::start_with_metrics(&s, &[]);
    st.daemon = Some(daemon);
    st.ctrd = Some(Containerd::start(
        &s,
        Some(&st.daemon.as_ref().unwrap().sock),
    ));
    let out = rsnap_ok(&[
        "pull",
        "-a",
        st.ctrd.as_ref().unwrap().socket.to_str().unwrap(),
        "-n",
        NAMESPACE,
        "--plain-http",
        &image,
    ]);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    let root = s.join("root");
    let mounts = fuse_mounts_under(&root);
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let sock = root.join("fdstore.sock");
    assert!(sock.exists(), "no fd holder");

    // SIGTERM: the mounts are handed over; no daemon follows.
    common::stop(st.daemon.take().unwrap(), libc::SIGTERM);
    let stopped = Instant::now();
    // Readers of files nothing has read yet: each waits in the kernel.
    let readers: Vec<_> = mounts
        .iter()
        .map(|m| {
            let p = m.join("d/a.bin");
            std::thread::spawn(move || {
                let r = std::fs::read(&p);
                (
                    r.map(|b| b.len()).map_err(|e| e.to_string()),
                    Instant::now(),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "a reader was answered while no daemon ran"
    );
    let mut waited = Vec::new();
    for r in readers {
        // Joined with a bound: a hang fails the test instead of blocking it.
        let deadline = Instant::now() + Duration::from_secs(GIVE_UP_SEC + 20);
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(r.is_finished(), "a reader still hangs after the give-up");
        let (res, at) = r.join().unwrap();
        assert!(res.is_err(), "a reader got data with no daemon: {res:?}");
        waited.push(at - stopped);
        eprintln!("reader: {res:?} after {:?}", at - stopped);
    }
    for w in &waited {
        assert!(
            *w >= Duration::from_secs(GIVE_UP_SEC) - Duration::from_millis(500),
            "gave up early: {w:?}"
        );
    }
    // The holder cleaned up and exited; the dead mounts are detached.
    assert!(
        wait_until(Duration::from_secs(10), || !sock.exists()),
        "the fd holder did not exit"
    );
    assert!(
        fuse_mounts_under(&root).is_empty(),
        "mounts left: {:?}",
        fuse_mounts_under(&root)
    );
    assert!(root.join(lazyfs_note()).exists(), "no give-up note");

    // The next daemon counts it and serves the image again.
    let (daemon, metrics2) = common::start_with_metrics(&s, &[]);
    st.daemon = Some(daemon);
    let text = common::metrics(&metrics2);
    assert_eq!(
        common::counter(&text, "handover_given_up"),
        Some(2),
        "{text}"
    );
    // containerd redials the restarted daemon with a backoff: "Error while
    // dialing" for a few seconds is that, not a failure of ours.
    let deadline = Instant::now() + Duration::from_secs(40);
    let out = loop {
        let out = common::ctr_when_reconnected(
            st.ctrd.as_ref().unwrap(),
            &[
                "run",
                "--rm",
                "--snapshotter=remote",
                &image,
                &unique_id("after"),
                "wc",
                "-c",
                "/d/a.bin",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() || !err.contains("Error while dialing") || Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("300000"));
    eprintln!(
        "FIGURE handover-timeout: give-up after {GIVE_UP_SEC}s ; readers answered (error) after {} ; next daemon serves the image",
        waited
            .iter()
            .map(|w| format!("{:.2}s", w.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The holder's note name (`lazyfs::handover::GAVE_UP_FILE`), beside its socket.
fn lazyfs_note() -> &'static str {
    "fd-holder-gave-up"
}
