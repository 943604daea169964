//! The runc bundle of a profiling run: the process (image config's Env,
//! WorkingDir, User, Entrypoint + Cmd, or the given command), bind mounts
//! and the network namespace, as an OCI runtime `config.json`. Names are
//! resolved inside the image's rootfs (its /etc/passwd, /etc/group and
//! PATH), never on the host.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use serde_json::Value;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A `--mount SRC:DST[:ro]` bind mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: String,
    pub readonly: bool,
}

impl BindMount {
    pub fn parse(s: &str) -> Result<BindMount> {
        let bad = || Error::BadMount(s.to_string());
        let mut parts = s.split(':');
        let (src, dst) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
        let readonly = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() || !src.starts_with('/') || !dst.starts_with('/') {
            return Err(bad());
        }
        if !Path::new(src).exists() {
            return Err(bad());
        }
        Ok(BindMount {
            src: src.into(),
            dst: dst.to_string(),
            readonly,
        })
    }
}

/// What the run asks for, beyond the image config.
pub(crate) struct Process<'a> {
    pub command: &'a [String],
    pub env: &'a [String],
    pub mounts: &'a [BindMount],
    pub net_host: bool,
}

/// Open `path` inside `root` as if `root` were `/` (symlinks included).
fn open_in(root: &Path, path: &str, o_path: bool) -> Option<OwnedFd> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    let dir = openat2(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .ok()?;
    let flags = if o_path { OFlags::PATH } else { OFlags::RDONLY } | OFlags::CLOEXEC;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(&dir, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT).ok()
}

fn read_in(root: &Path, path: &str) -> String {
    let Some(fd) = open_in(root, path, false) else {
        return String::new();
    };
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s);
    s
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// uid, gid, additional gids and home of the config's `User`.
fn resolve_user(root: &Path, user: &str) -> Result<(u32, u32, Vec<u32>, Option<String>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_in(root, "/etc/passwd");
    let group = read_in(root, "/etc/group");
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let uid = match (u.parse::<u32>(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| Error::User(user.to_string()))?,
        (Err(_), None) => return Err(Error::User(user.to_string())),
    };
    let name = entry.as_ref().map(|f| f[0].to_string());
    let home = entry.as_ref().map(|f| f[5].to_string());
    let primary = entry
        .as_ref()
        .and_then(|f| f[3].parse::<u32>().ok())
        .unwrap_or(0);
    // name:x:gid:members
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let gid = match g {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| Error::User(user.to_string()))?,
        },
    };
    let mut extra = Vec::new();
    if let (Some(name), None) = (&name, g) {
        for f in &groups {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid && !extra.contains(&n) {
                        extra.push(n);
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra, home))
}

/// `env` with `KEY=VALUE` overrides applied (same key replaced).
fn merge_env(mut env: Vec<String>, extra: &[String]) -> Result<Vec<String>> {
    for kv in extra {
        let Some((k, _)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Error::BadEnv(kv.clone()));
        };
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
        env.push(kv.clone());
    }
    Ok(env)
}

fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

/// Is `cmd` executable in the rootfs (looked up in `PATH` without a slash)?
fn command_exists(root: &Path, cmd: &str, path: &str, cwd: &str) -> bool {
    if cmd.contains('/') {
        let full = if cmd.starts_with('/') {
            cmd.to_string()
        } else {
            format!("{cwd}/{cmd}")
        };
        return open_in(root, &full, true).is_some();
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .any(|d| open_in(root, &format!("{d}/{cmd}"), true).is_some())
}

/// The runtime spec for `rootfs` and the image `config` (the config blob).
pub(crate) fn build(rootfs: &Path, config: &Value, p: &Process) -> Result<Spec> {
    let c = &config["config"];
    let args = if p.command.is_empty() {
        let mut a = strings(&c["Entrypoint"]);
        a.extend(strings(&c["Cmd"]));
        a
    } else {
        p.command.to_vec()
    };
    if args.is_empty() {
        return Err(Error::NoCommand);
    }
    let cwd = c["WorkingDir"]
        .as_str()
        .filter(|s| s.starts_with('/'))
        .unwrap_or("/")
        .to_string();
    let user = c["User"].as_str().unwrap_or("");
    let (uid, gid, extra, home) = if user.is_empty() {
        (0, 0, Vec::new(), Some("/root".to_string()))
    } else {
        resolve_user(rootfs, user)?
    };
    let mut env = merge_env(strings(&c["Env"]), p.env)?;
    if env_get(&env, "PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env_get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", home.unwrap_or_else(|| "/".into())));
    }
    let path = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
    if !command_exists(rootfs, &args[0], &path, &cwd) {
        return Err(Error::CommandNotFound {
            command: args[0].clone(),
            path,
        });
    }

    let mut spec = Spec::default();
    spec.set_hostname(Some("rsnap-optimize".into()));
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(rootfs.to_path_buf())
        .set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut proc = oci_spec::runtime::Process::default();
    let mut u = oci_spec::runtime::User::default();
    u.set_uid(uid).set_gid(gid);
    if !extra.is_empty() {
        u.set_additional_gids(Some(extra));
    }
    proc.set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(cwd.into())
        .set_user(u)
        .set_terminal(Some(false));
    spec.set_process(Some(proc));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for b in p.mounts {
        let mut m = Mount::default();
        let mut opts = vec!["rbind".to_string()];
        if b.readonly {
            opts.push("ro".into());
        }
        m.set_destination(b.dst.clone().into())
            .set_typ(Some("bind".into()))
            .set_source(Some(b.src.clone()))
            .set_options(Some(opts));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    if p.net_host {
        if let Some(linux) = spec.linux_mut() {
            if let Some(ns) = linux.namespaces_mut() {
                ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_mounts() {
        let m = BindMount::parse("/tmp:/data:ro").unwrap();
        assert_eq!((m.dst.as_str(), m.readonly), ("/data", true));
        assert!(!BindMount::parse("/tmp:/data").unwrap().readonly);
        for bad in [
            "/tmp",
            "tmp:/d",
            "/tmp:d",
            "/tmp:/d:rx",
            "/nonexistent-x:/d",
            "/tmp:/d:ro:x",
        ] {
            assert!(BindMount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merges_env() {
        let env = merge_env(vec!["A=1".into(), "B=2".into()], &["A=3".into()]).unwrap();
        assert_eq!(env, ["B=2", "A=3"]);
        assert!(merge_env(vec![], &["nokey".into()]).is_err());
        assert!(merge_env(vec![], &["=v".into()]).is_err());
        assert_eq!(env_get(&env, "A"), Some("3"));
    }

    #[test]
    fn resolves_users_in_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nextra:x:2000:app,other\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(d.path(), u);
        assert_eq!(
            r("app").unwrap(),
            (1000, 1001, vec![2000], Some("/home/app".into()))
        );
        assert_eq!(r("app:extra").unwrap().1, 2000);
        let (uid, gid, _, _) = r("1000:5").unwrap();
        assert_eq!((uid, gid), (1000, 5));
        assert_eq!(r("42").unwrap().0, 42);
        assert!(matches!(r("nobody"), Err(Error::User(_))));
        assert!(matches!(r("app:nogroup"), Err(Error::User(_))));
    }
}
