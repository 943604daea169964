//! Generates the containerd snapshots v1 gRPC server and client from the
//! vendored protos with protox, so no `protoc` is needed on the build host.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
        "proto/github.com/containerd/containerd/api/types/mount.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        // The client is used by our tests and by tools that talk to the daemon.
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
