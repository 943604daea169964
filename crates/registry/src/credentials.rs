//! Credentials from docker's `config.json`: `auths` (with `auth` or
//! `username`/`password`, `identitytoken`), `credHelpers` and `credsStore`
//! (running `docker-credential-<name> get` with the server on stdin), plus
//! static credentials given in code, looked up by exact host; and a
//! [`CredentialSource`] asked first, per host and repository (credentials
//! learnt at run time, such as Kubernetes pull secrets).

use crate::error::{Error, Result};
use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token ("identity token") for the token server.
    IdentityToken {
        username: String,
        token: String,
    },
    /// A bearer token for the registry itself, sent as is (no token
    /// server round trip); useless for a registry that wants Basic.
    RegistryToken(String),
}

/// Credentials known per repository, asked before the docker config for
/// every request (so cheap, and never blocking). `host` is normalised as
/// [`normalize_host`] does (`docker.io` for Docker Hub), `repository` is
/// the path in the registry (`library/busybox`). Implementations must not
/// log what they return.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    fn credential(&self, host: &str, repository: &str) -> Option<Credential>;
}

impl std::fmt::Debug for Credential {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken { username, .. } => {
                write!(f, "IdentityToken({username}, ***)")
            }
            Credential::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Default)]
pub struct CredentialStore {
    statics: HashMap<String, Credential>,
    auths: HashMap<String, Credential>,
    creds_store: Option<String>,
    cred_helpers: HashMap<String, String>,
    /// Helper answers are slow to get: keep them (None = helper had nothing).
    helper_cache: Mutex<HashMap<String, Option<Credential>>>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000`.
pub fn normalize_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or("");
    match k {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => k.to_string(),
    }
}

impl CredentialStore {
    /// Load `<dir>/config.json`, where dir is `dir`, else `$DOCKER_CONFIG`,
    /// else `$HOME/.docker`. A missing file means no credentials.
    pub fn load(
        dir: Option<&Path>,
        statics: HashMap<String, Credential>,
    ) -> Result<CredentialStore> {
        let dir: Option<PathBuf> = dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        let mut store = CredentialStore {
            statics: statics
                .into_iter()
                .map(|(k, v)| (normalize_host(&k), v))
                .collect(),
            ..Default::default()
        };
        let Some(dir) = dir else { return Ok(store) };
        let path = dir.join("config.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        };
        let cfg: ConfigFile = serde_json::from_slice(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for (k, a) in cfg.auths {
            if let Some(c) = entry_credential(&a)
                .map_err(|e| Error::Config(format!("{}: auths.{k}: {e}", path.display())))?
            {
                store.auths.insert(normalize_host(&k), c);
            }
        }
        store.creds_store = cfg.creds_store.filter(|s| !s.is_empty());
        store.cred_helpers = cfg
            .cred_helpers
            .into_iter()
            .map(|(k, v)| (normalize_host(&k), v))
            .collect();
        Ok(store)
    }

    /// Credentials for exactly this host (`docker.io` for Docker Hub).
    pub fn get(&self, host: &str) -> Result<Option<Credential>> {
        let host = normalize_host(host);
        if let Some(c) = self.statics.get(&host) {
            return Ok(Some(c.clone()));
        }
        let helper = self.cred_helpers.get(&host).or(self.creds_store.as_ref());
        if let Some(helper) = helper {
            if let Some(c) = self.helper_cache.lock().get(&host) {
                return Ok(c.clone());
            }
            let server = if host == "docker.io" {
                "https://index.docker.io/v1/".to_string()
            } else {
                host.clone()
            };
            let c = run_helper(helper, &server)?;
            // The helper is authoritative when it has an answer; else fall back to auths.
            let c = c.or_else(|| self.auths.get(&host).cloned());
            self.helper_cache.lock().insert(host, c.clone());
            return Ok(c);
        }
        Ok(self.auths.get(&host).cloned())
    }
}

fn entry_credential(a: &AuthEntry) -> std::result::Result<Option<Credential>, String> {
    let (mut user, mut pass) = (a.username.clone(), a.password.clone());
    if let Some(auth) = a.auth.as_deref().filter(|s| !s.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "auth is not base64".to_string())?;
        let s = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
        let (u, p) = s.split_once(':').ok_or("auth is not user:password")?;
        user = Some(u.to_string());
        pass = Some(p.to_string());
    }
    if let Some(t) = a.identitytoken.as_deref().filter(|s| !s.is_empty()) {
        return Ok(Some(Credential::IdentityToken {
            username: user.unwrap_or_default(),
            token: t.into(),
        }));
    }
    Ok(match (user, pass) {
        (Some(u), Some(p)) if !u.is_empty() => Some(Credential::Basic {
            username: u,
            password: p,
        }),
        _ => None,
    })
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

fn run_helper(name: &str, server: &str) -> Result<Option<Credential>> {
    let helper = format!("docker-credential-{name}");
    let herr = |detail: String| Error::CredentialHelper {
        helper: helper.clone(),
        detail,
    };
    if name.contains('/') {
        return Err(herr("helper name must not contain '/'".into()));
    }
    let mut child = Command::new(&helper)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| herr(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| herr(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| herr(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // The protocol's "not found" answer is not an error: no credentials.
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(herr(format!("exit {}: {}", out.status, msg.trim())));
    }
    let r: HelperReply =
        serde_json::from_slice(&out.stdout).map_err(|e| herr(format!("bad reply: {e}")))?;
    if r.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if r.username == "<token>" {
        Credential::IdentityToken {
            username: String::new(),
            token: r.secret,
        }
    } else {
        Credential::Basic {
            username: r.username,
            password: r.secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn config_json_auths_and_helpers() {
        let d = tempfile::tempdir().unwrap();
        let helper_dir = d.path().join("bin");
        std::fs::create_dir(&helper_dir).unwrap();
        let helper = helper_dir.join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread s\nif [ \"$s\" = helped.example ]; then echo '{\"Username\":\"hu\",\"Secret\":\"hs\"}'; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = r#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "reg.example:5000":{"username":"u2","password":"p2"},
            "tok.example":{"identitytoken":"rt"}},
          "credHelpers":{"helped.example":"fake","missing.example":"fake"}}"#;
        std::fs::write(d.path().join("config.json"), cfg).unwrap();
        // Make the helper findable: PATH is process-wide, so prepend once.
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", helper_dir.display()));
        let s = CredentialStore::load(Some(d.path()), HashMap::new()).unwrap();
        assert_eq!(
            s.get("docker.io").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
        assert_eq!(
            s.get("reg.example:5000").unwrap(),
            Some(Credential::Basic {
                username: "u2".into(),
                password: "p2".into()
            })
        );
        assert!(matches!(
            s.get("tok.example").unwrap(),
            Some(Credential::IdentityToken { .. })
        ));
        // Exact host only: no credentials for a look-alike or a different port.
        assert_eq!(s.get("reg.example").unwrap(), None);
        assert_eq!(s.get("reg.example:5001").unwrap(), None);
        assert_eq!(
            s.get("helped.example").unwrap(),
            Some(Credential::Basic {
                username: "hu".into(),
                password: "hs".into()
            })
        );
        assert_eq!(s.get("missing.example").unwrap(), None);
        assert!(!format!("{:?}", s.get("docker.io").unwrap()).contains("pass"));
    }

    #[test]
    fn missing_file_is_empty_and_bad_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let s = CredentialStore::load(Some(d.path()), HashMap::new()).unwrap();
        assert_eq!(s.get("x").unwrap(), None);
        std::fs::write(d.path().join("config.json"), "{not json").unwrap();
        assert!(CredentialStore::load(Some(d.path()), HashMap::new()).is_err());
    }
}
