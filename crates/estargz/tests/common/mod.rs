//! Tars built in code for the tests, and what each entry should read back as.
#![allow(dead_code)]

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub enum Want {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub want: Want,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub fn spec(name: &str, want: Want) -> Spec {
    let mode = match want {
        Want::Dir => 0o755,
        _ => 0o644,
    };
    Spec {
        name: name.into(),
        want,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        xattrs: BTreeMap::new(),
    }
}

/// Deterministic pseudo-random bytes (compressible enough to be realistic).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (x % 7) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// A PAX-format tar of `specs`, in order.
pub fn build_tar(specs: &[Spec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for s in specs {
        if !s.xattrs.is_empty() {
            let recs: Vec<(String, Vec<u8>)> = s
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                .collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(s.mode);
        h.set_uid(s.uid);
        h.set_gid(s.gid);
        h.set_mtime(s.mtime);
        h.set_username("user").unwrap();
        h.set_groupname("group").unwrap();
        let mut data: &[u8] = &[];
        match &s.want {
            Want::Dir => h.set_entry_type(tar::EntryType::Directory),
            Want::File(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                data = c;
            }
            Want::Symlink(_) => h.set_entry_type(tar::EntryType::Symlink),
            Want::Hardlink(_) => h.set_entry_type(tar::EntryType::Link),
            Want::Char(ma, mi) | Want::Block(ma, mi) => {
                h.set_entry_type(if matches!(s.want, Want::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
            }
            Want::Fifo => h.set_entry_type(tar::EntryType::Fifo),
        }
        h.set_size(data.len() as u64);
        match &s.want {
            Want::Symlink(t) | Want::Hardlink(t) => b.append_link(&mut h, &s.name, t).unwrap(),
            _ => b.append_data(&mut h, &s.name, data).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// A layer with every kind of entry, files around `chunk`-size boundaries.
pub fn sample_specs(chunk: usize) -> Vec<Spec> {
    let mut v = vec![spec("./", Want::Dir), spec("bin/", Want::Dir)];
    for (i, size) in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 7]
        .into_iter()
        .enumerate()
    {
        v.push(spec(
            &format!("bin/f{size}"),
            Want::File(content(i as u64, size)),
        ));
    }
    let mut x = spec("etc/xattr", Want::File(b"hello".to_vec()));
    x.xattrs.insert("user.a".into(), b"one".to_vec());
    x.xattrs
        .insert("security.capability".into(), vec![1, 0, 0, 2, 0xff, 0]);
    x.mode = 0o4755;
    x.uid = 1000;
    x.gid = 2000;
    v.push(x);
    v.push(spec("etc/link", Want::Symlink("../bin/f1".into())));
    v.push(spec("etc/hard", Want::Hardlink("bin/f1".into())));
    v.push(spec("dev/null", Want::Char(1, 3)));
    v.push(spec("dev/sda", Want::Block(8, 0)));
    v.push(spec("dev/fifo", Want::Fifo));
    v.push(spec("old/.wh.gone", Want::File(vec![])));
    v.push(spec("old/.wh..wh..opq", Want::File(vec![])));
    let long = format!("deep/{}/file-with-a-long-name-{}", "d".repeat(120), "é<&>");
    v.push(spec(&long, Want::File(content(99, 300))));
    v.push(spec("usr/share/empty-dir/", Want::Dir));
    v
}
