//! Where an image reference points: its registry host and repository, the
//! way containerd's CRI plugin normalises a Docker reference (no host means
//! `docker.io`, a one-part repository there lives under `library/`).

/// The registry host (`127.0.0.1:5000`, `docker.io`) and repository
/// (`library/busybox`) of `reference` (`name[:tag][@digest]`); `None` for
/// something that is no image reference.
pub fn host_and_repository(reference: &str) -> Option<(String, String)> {
    let name = reference.split('@').next()?;
    // A tag is after the last ':' that follows the last '/'.
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
        return None;
    }
    let (host, repo) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let repo = if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" {
        "docker.io".to_string()
    } else {
        host
    };
    if repo.split('/').any(str::is_empty) {
        return None;
    }
    Some((host, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr(r: &str) -> Option<(String, String)> {
        host_and_repository(r)
    }

    fn pair(h: &str, r: &str) -> Option<(String, String)> {
        Some((h.to_string(), r.to_string()))
    }

    #[test]
    fn normalises_like_docker_references() {
        assert_eq!(hr("busybox"), pair("docker.io", "library/busybox"));
        assert_eq!(hr("busybox:1.36"), pair("docker.io", "library/busybox"));
        assert_eq!(hr("me/app"), pair("docker.io", "me/app"));
        assert_eq!(
            hr("docker.io/library/busybox:latest"),
            pair("docker.io", "library/busybox")
        );
        assert_eq!(hr("index.docker.io/me/app"), pair("docker.io", "me/app"));
        assert_eq!(hr("127.0.0.1:5000/a/b:v1"), pair("127.0.0.1:5000", "a/b"));
        assert_eq!(hr("localhost/app@sha256:abcd"), pair("localhost", "app"));
        assert_eq!(hr("ghcr.io/o/app:v1@sha256:abcd"), pair("ghcr.io", "o/app"));
    }

    #[test]
    fn rejects_what_is_no_reference() {
        assert_eq!(hr(""), None);
        assert_eq!(hr("/x"), None);
        assert_eq!(hr("reg.io/"), None);
        assert_eq!(hr("reg.io/a//b"), None);
    }
}
