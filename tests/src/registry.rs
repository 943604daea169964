//! A real `docker-registry` (distribution 2.8) on 127.0.0.1, in a scratch dir.

use crate::process::{wait_until, Service};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    service: Service,
}

#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// `(htpasswd file)` enables basic auth with realm "test".
    pub htpasswd: Option<PathBuf>,
    /// Token auth: (realm URL, service, issuer, rootcertbundle path).
    pub token: Option<(String, String, String, PathBuf)>,
    /// Keep data in this directory (to restart a registry on the same data).
    pub data_dir: Option<PathBuf>,
    /// Listen on this port (to restart on the same address).
    pub port: Option<u16>,
    /// Serve HTTPS with this (certificate, key) PEM pair (see `crate::tls`).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Registry {
    pub fn start(scratch: &Path) -> Registry {
        Self::start_with(scratch, RegistryOptions::default())
    }

    pub fn start_with(scratch: &Path, opts: RegistryOptions) -> Registry {
        let port = opts.port.unwrap_or_else(crate::free_port);
        let dir = scratch.join(format!("registry-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let data = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        std::fs::create_dir_all(&data).unwrap();
        let mut auth = String::new();
        if let Some(h) = &opts.htpasswd {
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                h.display()
            );
        }
        if let Some((realm, service, issuer, bundle)) = &opts.token {
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            );
        }
        let mut tls = String::new();
        if let Some((cert, key)) = &opts.tls {
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            data.display()
        );
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        let service = Service::spawn("docker-registry", cmd, &dir.join("registry.log"))
            .expect("spawn docker-registry");
        let ok = wait_until(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            ok,
            "docker-registry did not listen on {port}; see {}",
            dir.display()
        );
        Registry { port, dir, service }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Stop it (simulating an outage). Data stays in `dir/data`.
    pub fn stop(&mut self) {
        self.service.stop(Duration::from_secs(5));
    }
}

/// Copy an OCI layout to the registry with skopeo (plain HTTP on loopback).
pub fn skopeo_push(oci_dir: &Path, tag: &str, dest: &str) {
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", oci_dir.display()))
        .arg(format!("docker://{dest}"))
        .status()
        .expect("run skopeo");
    assert!(st.success(), "skopeo copy to {dest} failed");
}

/// An htpasswd file with one user (bcrypt, low cost: tests only), for
/// `RegistryOptions::htpasswd`.
pub fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let p = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    std::fs::write(&p, format!("{user}:{hash}\n")).unwrap();
    p
}

/// A docker config directory (for `DOCKER_CONFIG`) whose config.json logs
/// `user` into `host` the way `docker login` writes it.
pub fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine;
    let d = dir.join("docker-config");
    std::fs::create_dir_all(&d).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(d.join("config.json"), json.to_string()).unwrap();
    d
}
