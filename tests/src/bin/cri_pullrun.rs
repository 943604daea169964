//! `cri_pullrun`: the kubelet's path to a running container, timed, for
//! bench/cri_pull_run.sh: CRI `PullImage`, `RunPodSandbox` (host network),
//! `CreateContainer` + `StartContainer` of the image's own command, wait
//! for it to exit, read its output from the CRI log; the pod is removed.
//!
//!   cri_pullrun --socket CONTAINERD_SOCK --image REF --log-dir DIR
//!   cri_pullrun --pause-image OCI_DIR TAG   (write the sandbox image's OCI layout)
//!
//! Prints `pull=S pod=S start=S exited=S total=S` (seconds, each step's own
//! time; total = from PullImage to the container's exit) on the first line,
//! then the container's output.

use e2e::cri::{write_pause_image, Cri, PodNetwork};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: cri_pullrun --socket SOCK --image REF --log-dir DIR | --pause-image OCI_DIR TAG";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--pause-image") {
        let (Some(dir), Some(tag)) = (args.get(1), args.get(2)) else {
            fail("--pause-image needs OCI_DIR and TAG");
        };
        write_pause_image(&PathBuf::from(dir), tag);
        return;
    }
    let (mut socket, mut image, mut log_dir) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| fail(&format!("{a} needs a value")));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(v)),
            "--image" => image = Some(v),
            "--log-dir" => log_dir = Some(PathBuf::from(v)),
            _ => fail(&format!("unknown argument {a}")),
        }
    }
    let (Some(socket), Some(image), Some(log_dir)) = (socket, image, log_dir) else {
        fail("--socket, --image and --log-dir are required");
    };

    let cri = Cri::connect(&socket);
    let t0 = Instant::now();
    if let Err(e) = cri.pull(&image) {
        fail(&format!("PullImage {image}: {e}"));
    }
    let t1 = Instant::now();
    let pod = cri.run_pod("bench", PodNetwork::Host, &log_dir);
    let t2 = Instant::now();
    let id = pod.start_container("app", &image, &[]);
    let t3 = Instant::now();
    let code = pod.wait_exited(&id, Duration::from_secs(300));
    let t4 = Instant::now();
    let out = pod.log("app");
    drop(pod);
    let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
    println!(
        "pull={:.2} pod={:.2} start={:.2} exited={:.2} total={:.2}",
        s(t0, t1),
        s(t1, t2),
        s(t2, t3),
        s(t3, t4),
        s(t0, t4)
    );
    print!("{out}");
    if code != 0 {
        fail(&format!("the container exited with {code}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("cri_pullrun: {msg}\n{USAGE}");
    std::process::exit(2);
}
