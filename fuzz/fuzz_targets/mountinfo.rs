//! /proc/self/mountinfo carries paths chosen by whoever mounted (an
//! unprivileged FUSE user, a container image): the parser must return a
//! ParseError, never panic, on any bytes. A line it accepts must come back
//! the same after its fields are escaped again the kernel's way and parsed
//! a second time (decoding loses nothing and invents nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mountinfo::{mount_points_under, parse, parse_line, MountInfo};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The kernel's escaping: space, tab, newline and backslash as `\ooo`.
fn escape(s: &OsStr) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in s.as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

fn unparse(m: &MountInfo) -> Vec<u8> {
    let mut l = format!("{} {} {}:{} ", m.id, m.parent_id, m.major, m.minor).into_bytes();
    let mut fields = vec![
        escape(m.root.as_os_str()),
        escape(m.mount_point.as_os_str()),
        escape(&m.mount_options),
    ];
    // An optional field that decodes to "-" was written escaped (`\055`):
    // bare, it would be the separator.
    fields.extend(m.optional_fields.iter().map(|o| {
        if o == "-" {
            b"\\055".to_vec()
        } else {
            escape(o)
        }
    }));
    fields.push(b"-".to_vec());
    fields.extend([
        escape(&m.fs_type),
        escape(&m.source),
        escape(&m.super_options),
    ]);
    l.extend(fields.join(&b' '));
    l
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(m) = parse_line(line) {
            assert_eq!(parse_line(&unparse(&m)).as_ref(), Ok(&m));
        }
    }
    if let Ok(table) = parse(data) {
        let prefix = table
            .first()
            .map(|m| m.mount_point.clone())
            .unwrap_or_default();
        let under = mount_points_under(&table, &prefix);
        assert!(under.iter().all(|p| p.starts_with(&prefix)));
        let _ = mount_points_under(&table, Path::new("/"));
    }
});
