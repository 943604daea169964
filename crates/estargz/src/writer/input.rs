//! Scan an uncompressed tar (through `ReadAt`) into entries: where each
//! entry's header bytes are (PAX / GNU extension headers included, so they
//! can be copied verbatim), where its data is, and its resolved metadata.

use crate::blob::{read_exact_at, ReadAt};
use crate::error::{Result, TarError};
use crate::index::{clean_path, MAX_ENTRIES};
use crate::tarfmt::{self as t, Header, BLOCK};
use std::collections::BTreeMap;
use std::ops::Range;

/// PAX and GNU long-name data larger than this is refused (as Go's reader does).
const MAX_EXTENSION: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reg,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// A PAX global header: copied through, not a file.
    Global,
}

#[derive(Debug, Clone)]
pub struct InEntry {
    pub kind: Kind,
    /// Header bytes in the source, extension headers included.
    pub raw: Range<u64>,
    /// Data in the source (empty for header-only types).
    pub data: Range<u64>,
    /// Name as written in the tar (lossy UTF-8, as Go's JSON would make it).
    pub name: String,
    /// `clean_path(name)`; `""` for the root and for global headers.
    pub clean: String,
    pub link: String,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    /// Seconds, rounded.
    pub mtime: i64,
    pub uname: String,
    pub gname: String,
    pub devmajor: i64,
    pub devminor: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// PAX time `"[-]secs[.frac]"` rounded to a second (half up, as Go's Round).
fn pax_time(v: &[u8], at: u64) -> Result<i64, TarError> {
    let s = std::str::from_utf8(v).map_err(|_| TarError::Pax(at))?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().map_err(|_| TarError::Pax(at))?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return Err(TarError::Pax(at));
    }
    let up = frac.as_bytes().first().is_some_and(|&d| d >= b'5');
    Ok(match (up, s.starts_with('-')) {
        (true, false) => secs.saturating_add(1),
        _ => secs,
    })
}

fn pax_int(v: &[u8], at: u64) -> Result<i64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(TarError::Pax(at))
}

/// Scan `len` bytes of tar from `src`. Stops at the first zero block (or
/// at the end of the input on a block boundary).
pub fn scan<S: ReadAt + ?Sized>(src: &S, len: u64) -> Result<Vec<InEntry>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut ext_start: Option<u64> = None;
    let mut pax: Vec<t::PaxRecord> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut block = [0u8; BLOCK];
    loop {
        if pos == len && ext_start.is_none() {
            break;
        }
        if pos + BLOCK as u64 > len {
            return Err(TarError::Truncated(pos).into());
        }
        read_exact_at(src, pos, &mut block)?;
        if t::is_zero_block(&block) {
            if ext_start.is_some() {
                return Err(TarError::Truncated(pos).into());
            }
            break;
        }
        let h = t::parse_header(&block, pos)?;
        let data_start = pos + BLOCK as u64;
        let typeflag = h.typeflag;
        // Go's reader (and so containerd) reads no data for these, whatever the size field says.
        let header_only = matches!(
            typeflag,
            t::TYPE_LINK
                | t::TYPE_SYMLINK
                | t::TYPE_CHAR
                | t::TYPE_BLOCK
                | t::TYPE_DIR
                | t::TYPE_FIFO
        );
        let size = match pax.iter().rev().find(|(k, _)| k == b"size") {
            _ if header_only => 0,
            // PAX size overrides the header's (which may be 0 for huge files).
            Some((_, v)) => u64::try_from(pax_int(v, pos)?).map_err(|_| TarError::Pax(pos))?,
            None => h.size as u64,
        };
        let data_end = data_start
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or(TarError::Truncated(pos))?;
        let next = data_end + t::padding(size);
        match typeflag {
            t::TYPE_PAX | t::TYPE_GNU_LONGNAME | t::TYPE_GNU_LONGLINK => {
                if size > MAX_EXTENSION {
                    return Err(TarError::ExtensionTooLarge { offset: pos, size }.into());
                }
                let mut data = vec![0u8; size as usize];
                read_exact_at(src, data_start, &mut data)?;
                ext_start.get_or_insert(pos);
                match typeflag {
                    t::TYPE_PAX => pax.extend(t::parse_pax(&data, pos)?),
                    t::TYPE_GNU_LONGNAME => long_name = Some(cstr(&data)),
                    _ => long_link = Some(cstr(&data)),
                }
                pos = next.min(len);
                continue;
            }
            _ => {}
        }
        if out.len() >= MAX_ENTRIES {
            return Err(TarError::TooManyEntries(MAX_ENTRIES).into());
        }
        let raw = ext_start.take().unwrap_or(pos)..data_start;
        let e = entry(
            h,
            raw,
            data_start..data_end,
            &mut pax,
            &mut long_name,
            &mut long_link,
            pos,
        )?;
        out.push(e);
        // A missing final padding is tolerated at the very end of the input.
        pos = next.min(len);
        if pos < next {
            break;
        }
    }
    Ok(out)
}

fn cstr(b: &[u8]) -> Vec<u8> {
    b.iter()
        .position(|&c| c == 0)
        .map_or(b, |i| &b[..i])
        .to_vec()
}

fn entry(
    h: Header,
    raw: Range<u64>,
    data: Range<u64>,
    pax: &mut Vec<t::PaxRecord>,
    long_name: &mut Option<Vec<u8>>,
    long_link: &mut Option<Vec<u8>>,
    at: u64,
) -> Result<InEntry, TarError> {
    let mut name = long_name.take().unwrap_or(h.name);
    let mut link = long_link.take().unwrap_or(h.linkname);
    let (mut uid, mut gid, mut mtime) = (h.uid, h.gid, h.mtime);
    let (mut uname, mut gname) = (h.uname, h.gname);
    let mut xattrs = BTreeMap::new();
    for (k, v) in pax.drain(..) {
        match k.as_slice() {
            b"path" => name = v,
            b"linkpath" => link = v,
            b"uid" => uid = pax_int(&v, at)?,
            b"gid" => gid = pax_int(&v, at)?,
            b"uname" => uname = v,
            b"gname" => gname = v,
            b"mtime" => mtime = pax_time(&v, at)?,
            k => {
                if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.insert(lossy(x), v);
                }
            }
        }
    }
    let name_s = lossy(&name);
    let kind = match h.typeflag {
        t::TYPE_REG | t::TYPE_CONT => Kind::Reg,
        t::TYPE_REG_OLD if name.ends_with(b"/") => Kind::Dir,
        t::TYPE_REG_OLD => Kind::Reg,
        t::TYPE_LINK => Kind::Hardlink,
        t::TYPE_SYMLINK => Kind::Symlink,
        t::TYPE_CHAR => Kind::Char,
        t::TYPE_BLOCK => Kind::Block,
        t::TYPE_DIR => Kind::Dir,
        t::TYPE_FIFO => Kind::Fifo,
        t::TYPE_PAX_GLOBAL => Kind::Global,
        other => {
            return Err(TarError::Unsupported {
                typeflag: other as char,
                name: name_s,
            })
        }
    };
    let clean = if kind == Kind::Global {
        String::new()
    } else {
        let c = clean_path(&name_s).ok_or_else(|| TarError::BadName(name_s.clone()))?;
        if c.is_empty() && kind != Kind::Dir {
            return Err(TarError::BadName(name_s));
        }
        c
    };
    Ok(InEntry {
        kind,
        raw,
        data,
        name: name_s,
        clean,
        link: lossy(&link),
        mode: h.mode,
        uid,
        gid,
        mtime,
        uname: lossy(&uname),
        gname: lossy(&gname),
        devmajor: h.devmajor,
        devminor: h.devminor,
        xattrs,
    })
}
