//! The one parser of `/proc/self/mountinfo` (proc(5)) in the workspace.
//!
//! A line reads
//! `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
//! Fields are separated by single spaces; the kernel writes a space, tab,
//! newline or backslash inside a field as a three-digit octal escape
//! (`\040`, `\011`, `\012`, `\134`). Paths are bytes, not text: decoded
//! fields are `OsString`/`PathBuf`, so a non-UTF-8 mount point survives
//! exactly. Input that does not have this shape is a [`ParseError`], never a
//! panic: the text is read from the kernel, but its paths are chosen by
//! whoever mounted (an unprivileged FUSE user, a container image).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the kernel shows the mounts of the calling process's namespace.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount: one line of mountinfo, escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that forms the root of this mount.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: OsString,
    /// `shared:N`, `master:N`, ... (zero or more).
    pub optional_fields: Vec<OsString>,
    /// `ext4`, `overlay`, `fuse.NAME`, ...
    pub fs_type: OsString,
    /// Filesystem-specific source (`/dev/sda1`, `overlay`, may be empty).
    pub source: OsString,
    /// Per-superblock options.
    pub super_options: OsString,
}

/// Why one line is not a mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("missing field: {0}")]
    MissingField(&'static str),
    #[error("{field}: not a decimal number")]
    BadNumber { field: &'static str },
    #[error("{field}: bad octal escape at byte {at} (want \\ and three octal digits up to \\377)")]
    BadEscape { field: &'static str, at: usize },
    #[error("no \"-\" separator after the optional fields")]
    NoSeparator,
    #[error("unexpected field after the super options")]
    TrailingField,
}

/// Reading or parsing a whole mount table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mountinfo line {line}: {source}")]
    Parse {
        /// 1-based.
        line: usize,
        #[source]
        source: ParseError,
    },
}

/// For callers whose own errors carry `std::io::Error`: a read error stays
/// itself, a parse error becomes `InvalidData` with the cause inside.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Read { source, .. } => source,
            e @ Error::Parse { .. } => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Reads and parses [`SELF_MOUNTINFO`].
pub fn read_self() -> Result<Vec<MountInfo>, Error> {
    read(Path::new(SELF_MOUNTINFO))
}

/// Reads and parses a mountinfo file (`/proc/PID/mountinfo`).
pub fn read(path: &Path) -> Result<Vec<MountInfo>, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Parses a whole table; empty lines are skipped, any other bad line is an
/// error (the kernel writes none, so one means the input is not mountinfo).
pub fn parse(text: &[u8]) -> Result<Vec<MountInfo>, Error> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|source| Error::Parse {
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<MountInfo, ParseError> {
    let mut f = line.split(|&b| b == b' ');
    let mut next = |name: &'static str| f.next().ok_or(ParseError::MissingField(name));
    let id = number(next("mount id")?, "mount id")?;
    let parent_id = number(next("parent id")?, "parent id")?;
    let dev = next("major:minor")?;
    let colon = dev
        .iter()
        .position(|&b| b == b':')
        .ok_or(ParseError::BadNumber {
            field: "major:minor",
        })?;
    let major = number(&dev[..colon], "major")?;
    let minor = number(&dev[colon + 1..], "minor")?;
    let root = PathBuf::from(unescape(next("root")?, "root")?);
    let mount_point = PathBuf::from(unescape(next("mount point")?, "mount point")?);
    let mount_options = unescape(next("mount options")?, "mount options")?;
    let mut optional_fields = Vec::new();
    loop {
        match f.next() {
            None => return Err(ParseError::NoSeparator),
            Some(b"-") => break,
            Some(o) => optional_fields.push(unescape(o, "optional field")?),
        }
    }
    let mut next = |name: &'static str| f.next().ok_or(ParseError::MissingField(name));
    let fs_type = unescape(next("filesystem type")?, "filesystem type")?;
    let source = unescape(next("source")?, "source")?;
    let super_options = unescape(next("super options")?, "super options")?;
    if f.next().is_some() {
        return Err(ParseError::TrailingField);
    }
    Ok(MountInfo {
        id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

/// Mount points at or below `dir`, deepest first; at equal depth the later
/// mount first. A point mounted twice (stacked) appears twice, so
/// unmounting in this order removes everything.
pub fn mount_points_under(mounts: &[MountInfo], dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts
        .iter()
        .rev()
        .filter(|m| m.mount_point.starts_with(dir))
        .map(|m| m.mount_point.clone())
        .collect();
    // Stable: equal depths keep the reversed (latest first) order.
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn number(s: &[u8], field: &'static str) -> Result<u32, ParseError> {
    let bad = ParseError::BadNumber { field };
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    // All ASCII digits, so valid UTF-8; `parse` catches overflow.
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(bad)
}

/// Decodes `\ooo` escapes; a backslash not followed by three octal digits
/// (at most `\377`) is an error: the kernel escapes every backslash.
fn unescape(s: &[u8], field: &'static str) -> Result<OsString, ParseError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let bad = ParseError::BadEscape { field, at: i };
        let digits = s.get(i + 1..i + 4).ok_or(bad.clone())?;
        let mut v: u32 = 0;
        for &d in digits {
            if !(b'0'..=b'7').contains(&d) {
                return Err(bad);
            }
            v = v * 8 + u32::from(d - b'0');
        }
        out.push(u8::try_from(v).map_err(|_| bad)?);
        i += 4;
    }
    Ok(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn line(mount_point: &str, source: &str) -> String {
        format!("36 35 98:0 / {mount_point} rw,noatime master:1 - fuse.rsnap {source} rw,user_id=0")
    }

    #[test]
    fn parses_all_fields() {
        let m = parse_line(
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!((m.id, m.parent_id, m.major, m.minor), (36, 35, 98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.mount_options, "rw,noatime");
        assert_eq!(m.optional_fields, ["master:1", "shared:2"]);
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
    }

    #[test]
    fn no_optional_fields_and_empty_source() {
        // `mount -t tmpfs "" DIR` leaves the source empty: two spaces.
        let m = parse_line(b"1 2 0:5 / /t rw - tmpfs  rw").unwrap();
        assert!(m.optional_fields.is_empty());
        assert_eq!(
            (m.fs_type.as_bytes(), m.source.as_bytes()),
            (&b"tmpfs"[..], &b""[..])
        );
    }

    #[test]
    fn decodes_space_tab_newline_backslash() {
        let m = parse_line(line(r"/a\040b\011c\012d\134e", r"src\040x").as_bytes()).unwrap();
        assert_eq!(m.mount_point, Path::new("/a b\tc\nd\\e"));
        assert_eq!(m.source, "src x");
    }

    #[test]
    fn decodes_non_utf8_bytes_exactly() {
        let m = parse_line(line(r"/x\377\200y", "s").as_bytes()).unwrap();
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/x\xff\x80y");
        // Raw non-UTF-8 bytes (never escaped by the kernel) pass through too.
        let mut raw = b"1 2 0:5 / /r\xfe rw - fuse.x s rw".to_vec();
        let m = parse_line(&raw).unwrap();
        assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/r\xfe");
        raw.push(b' ');
        assert_eq!(parse_line(&raw), Err(ParseError::TrailingField));
    }

    #[test]
    fn newline_escape_keeps_lines_apart() {
        let text = format!("{}\n\n{}\n", line(r"/one\012two", "a"), line("/three", "b"));
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/one\ntwo"));
        assert_eq!(m[1].mount_point, Path::new("/three"));
    }

    #[test]
    fn malformed_escapes_are_errors() {
        for (mp, at) in [
            (r"/bad\9xx", 4),
            (r"/trail\04", 6),
            (r"/end\", 4),
            (r"/big\400", 4),
        ] {
            assert_eq!(
                parse_line(line(mp, "s").as_bytes()),
                Err(ParseError::BadEscape {
                    field: "mount point",
                    at
                }),
                "{mp}"
            );
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        use ParseError::*;
        let cases: [(&[u8], ParseError); 9] = [
            (b"", BadNumber { field: "mount id" }),
            (b"garbage line", BadNumber { field: "mount id" }),
            (b"1", MissingField("parent id")),
            (
                b"1 2 3 / /m rw - x s o",
                BadNumber {
                    field: "major:minor",
                },
            ),
            (b"1 2 0:x / /m rw - x s o", BadNumber { field: "minor" }),
            (
                b"99999999999 2 0:1 / /m rw - x s o",
                BadNumber { field: "mount id" },
            ),
            (b"1 2 0:1 / /m rw master:1", NoSeparator),
            (b"1 2 0:1 / /m rw - x", MissingField("source")),
            (b"1 2 0:1 / /m rw - x s o extra", TrailingField),
        ];
        for (l, want) in cases {
            assert_eq!(parse_line(l), Err(want), "{:?}", String::from_utf8_lossy(l));
        }
        let text = format!("{}\nbroken\n", line("/ok", "s"));
        match parse(text.as_bytes()) {
            Err(Error::Parse { line: 2, .. }) => {}
            other => panic!("want a parse error on line 2, got {other:?}"),
        }
    }

    #[test]
    fn mount_points_under_deepest_and_latest_first() {
        let text = [
            line("/r", "a"),
            line("/r/a", "b"),
            line("/r/a/b", "c"),
            line("/r/a", "stacked"),
            line("/other/r/a", "d"),
            line("/rx", "e"),
        ]
        .join("\n");
        let m = parse(text.as_bytes()).unwrap();
        let got = mount_points_under(&m, Path::new("/r"));
        let want: Vec<PathBuf> = ["/r/a/b", "/r/a", "/r/a", "/r"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reads_this_process_table() {
        let m = read_self().expect("the kernel's own mountinfo parses");
        assert!(m.iter().any(|m| m.mount_point == Path::new("/")), "{m:?}");
    }

    #[test]
    fn errors_convert_to_io() {
        let e = read(Path::new("/nonexistent/mountinfo")).unwrap_err();
        assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::NotFound);
        let e = parse(b"x").unwrap_err();
        assert_eq!(
            std::io::Error::from(e).kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
