//! cri-pod: what the kubelet does to start a pod, from the command line
//! (Debian has no crictl): `PullImage` (optionally with a pull secret, on a
//! separate image-service socket such as our daemon's), `RunPodSandbox`
//! with the host's network, `CreateContainer` + `StartContainer`, wait for
//! the exit, print the container's output and how long each step took;
//! the pod is stopped and removed at the end. Used by scripts/demo-cri.sh.
//!
//! cri-pod --runtime SOCK [--images SOCK] [--user U --password P]
//!         --logs DIR IMAGE [COMMAND...]

use e2e::cri::{api::AuthConfig, Cri, PodNetwork};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: cri-pod --runtime SOCK [--images SOCK] [--user U --password P] --logs DIR IMAGE [COMMAND...]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut runtime, mut images, mut logs) = (None, None, None);
    let (mut user, mut password) = (None, None);
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--runtime" => runtime = Some(PathBuf::from(val())),
            "--images" => images = Some(PathBuf::from(val())),
            "--logs" => logs = Some(PathBuf::from(val())),
            "--user" => user = Some(val()),
            "--password" => password = Some(val()),
            _ if a.starts_with("--") => usage(),
            _ => rest.push(a),
        }
    }
    let (Some(runtime), Some(logs)) = (runtime, logs) else {
        usage()
    };
    if rest.is_empty() {
        usage();
    }
    let image = rest.remove(0);
    let cri = Cri::connect_split(&runtime, images.as_ref().unwrap_or(&runtime));
    let auth = user.map(|username| AuthConfig {
        username,
        password: password.unwrap_or_default(),
        ..Default::default()
    });

    let t = Instant::now();
    if let Err(e) = cri.pull_with_auth(&image, auth) {
        eprintln!("PullImage {image}: {e}");
        std::process::exit(1);
    }
    let pull = t.elapsed();
    let t = Instant::now();
    let pod = cri.run_pod("demo", PodNetwork::Host, &logs);
    let sandbox = t.elapsed();
    let t = Instant::now();
    let command: Vec<&str> = rest.iter().map(String::as_str).collect();
    let id = pod.start_container("app", &image, &command);
    let code = pod.wait_exited(&id, Duration::from_secs(300));
    let run = t.elapsed();
    print!("{}", pod.log("app"));
    drop(pod);
    eprintln!(
        "PullImage {:.2} s, RunPodSandbox {:.2} s, CreateContainer+StartContainer+exit {:.2} s (exit code {code})",
        pull.as_secs_f64(),
        sandbox.as_secs_f64(),
        run.as_secs_f64()
    );
    std::process::exit(code);
}
