//! The keychain on disk, so that layers of private images can be mounted
//! again after a daemon restart or a reboot without a new pull: one JSON
//! file in a directory only its owner may enter (0700), the file itself
//! 0600, replaced atomically (temporary file, fsync, rename, fsync of the
//! directory) so that a crash leaves the old or the new content, never a
//! mix. It holds secrets in clear text, like docker's `config.json`; no
//! error of this module quotes the file's content.

use crate::credentials::Credentials;
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILE: &str = "credentials.json";
const TMP: &str = "credentials.json.tmp";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only where the file is malformed, never what it holds (a secret).
    #[error("{}: not a keychain file (line {line}, column {column})", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{}: keychain file version {found}, this daemon reads {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

/// One remembered secret: for which host and repository, and when it was
/// last given to the registry client (unix seconds).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredEntry {
    pub host: String,
    pub repository: String,
    pub credentials: Credentials,
    pub last_used: u64,
}

#[derive(Serialize, Deserialize)]
struct FileRepr {
    version: u32,
    entries: Vec<EntryRepr>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Basic,
    IdentityToken,
    RegistryToken,
}

#[derive(Serialize, Deserialize)]
struct EntryRepr {
    host: String,
    repository: String,
    kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    username: String,
    /// The password or the token.
    secret: String,
    last_used: u64,
}

impl From<&StoredEntry> for EntryRepr {
    fn from(e: &StoredEntry) -> EntryRepr {
        let (kind, username, secret) = match &e.credentials {
            Credentials::Basic { username, password } => {
                (Kind::Basic, username.clone(), password.clone())
            }
            Credentials::IdentityToken(t) => (Kind::IdentityToken, String::new(), t.clone()),
            Credentials::RegistryToken(t) => (Kind::RegistryToken, String::new(), t.clone()),
        };
        EntryRepr {
            host: e.host.clone(),
            repository: e.repository.clone(),
            kind,
            username,
            secret,
            last_used: e.last_used,
        }
    }
}

impl From<EntryRepr> for StoredEntry {
    fn from(r: EntryRepr) -> StoredEntry {
        let credentials = match r.kind {
            Kind::Basic => Credentials::Basic {
                username: r.username,
                password: r.secret,
            },
            Kind::IdentityToken => Credentials::IdentityToken(r.secret),
            Kind::RegistryToken => Credentials::RegistryToken(r.secret),
        };
        StoredEntry {
            host: r.host,
            repository: r.repository,
            credentials,
            last_used: r.last_used,
        }
    }
}

/// The keychain file in directory `dir` (e.g. `ROOT/cri-keychain`).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// What the file holds; nothing if there is no file yet. A directory or
    /// file that others may read is made private again first.
    pub fn load(&self) -> Result<Vec<StoredEntry>, StoreError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &path, e)),
        };
        self.private_dir()?;
        let meta = fs::metadata(&path).map_err(|e| io("reading", &path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "keychain file was readable by others; made private");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| io("setting the mode of", &path, e))?;
        }
        let f: FileRepr = serde_json::from_slice(&text).map_err(|e| StoreError::Malformed {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
        })?;
        if f.version != VERSION {
            return Err(StoreError::Version {
                path,
                found: f.version,
            });
        }
        Ok(f.entries.into_iter().map(StoredEntry::from).collect())
    }

    /// Replace the file's content with `entries`, atomically.
    pub fn save(&self, entries: &[StoredEntry]) -> Result<(), StoreError> {
        self.private_dir()?;
        let body = serde_json::to_vec_pretty(&FileRepr {
            version: VERSION,
            entries: entries.iter().map(EntryRepr::from).collect(),
        })
        .expect("plain strings and numbers serialise");
        let tmp = self.dir.join(TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io("creating", &tmp, e))?;
        // A temporary file a crash left behind keeps its old mode on open.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(&body))
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing", &tmp, e))?;
        drop(f);
        let path = self.path();
        fs::rename(&tmp, &path).map_err(|e| io("replacing", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", &self.dir, e))
    }

    /// The directory exists and only its owner may enter it.
    fn private_dir(&self) -> Result<(), StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io("creating", &self.dir, e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io("setting the mode of", &self.dir, e))
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<StoredEntry> {
        vec![
            StoredEntry {
                host: "reg.io".into(),
                repository: "a/b".into(),
                credentials: Credentials::Basic {
                    username: "u".into(),
                    password: "p:w\"\n".into(),
                },
                last_used: 100,
            },
            StoredEntry {
                host: "reg.io".into(),
                repository: "a/c".into(),
                credentials: Credentials::IdentityToken("idt".into()),
                last_used: 200,
            },
            StoredEntry {
                host: "127.0.0.1:5000".into(),
                repository: "x".into(),
                credentials: Credentials::RegistryToken("rt".into()),
                last_used: 300,
            },
        ]
    }

    #[test]
    fn round_trip_is_private_and_atomic() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(&d.path().join("kc"));
        assert_eq!(s.load().unwrap(), Vec::new(), "no file yet");
        s.save(&entries()).unwrap();
        assert_eq!(s.load().unwrap(), entries());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("kc")), 0o700);
        assert_eq!(mode(&s.path()), 0o600);
        assert!(
            !d.path().join("kc").join(TMP).exists(),
            "renamed into place"
        );
        s.save(&entries()[..1]).unwrap();
        assert_eq!(s.load().unwrap(), entries()[..1].to_vec());
    }

    #[test]
    fn a_readable_file_or_dir_is_made_private() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        s.save(&entries()).unwrap();
        fs::set_permissions(s.path(), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(s.load().unwrap(), entries());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.path()), 0o600);
        assert_eq!(mode(d.path()), 0o700);
        // A stale temporary file with a wide mode is not reused as is.
        let tmp = d.path().join(TMP);
        fs::write(&tmp, "old").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        s.save(&entries()).unwrap();
        assert_eq!(mode(&s.path()), 0o600);
    }

    #[test]
    fn a_malformed_file_is_an_error_that_quotes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        fs::write(
            s.path(),
            r#"{"version":1,"entries":[{"host":"h","repository":"r","kind":"hunter2","secret":"s3cr3t","last_used":1}]}"#,
        )
        .unwrap();
        let e = s.load().unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(matches!(e, StoreError::Malformed { .. }), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
        fs::write(s.path(), r#"{"version":2,"entries":[]}"#).unwrap();
        assert!(matches!(
            s.load().unwrap_err(),
            StoreError::Version { found: 2, .. }
        ));
    }
}
