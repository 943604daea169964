//! Just enough of the tar format: parse one 512-byte header (v7, ustar,
//! GNU; octal and base-256 numbers), PAX records, and build the plain ustar
//! header the Go reference writes for the TOC and landmark entries.
//!
//! Our own code rather than the `tar` crate so the writer can copy every
//! input header byte for byte and bound every allocation itself.

use crate::error::TarError;

pub const BLOCK: usize = 512;

pub const TYPE_REG: u8 = b'0';
pub const TYPE_REG_OLD: u8 = 0;
pub const TYPE_LINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR: u8 = b'3';
pub const TYPE_BLOCK: u8 = b'4';
pub const TYPE_DIR: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';
pub const TYPE_CONT: u8 = b'7';
pub const TYPE_PAX: u8 = b'x';
pub const TYPE_PAX_GLOBAL: u8 = b'g';
pub const TYPE_GNU_LONGNAME: u8 = b'L';
pub const TYPE_GNU_LONGLINK: u8 = b'K';

/// One header block, decoded. Names are raw bytes (tar does not promise UTF-8).
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    pub mtime: i64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub devmajor: i64,
    pub devminor: i64,
}

pub fn is_zero_block(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Bytes up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// Octal (space/NUL padded) or base-256 (high bit set), as tar writers use.
fn number(b: &[u8], at: u64, field: &'static str) -> Result<i64, TarError> {
    let err = || TarError::Number { offset: at, field };
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        // Two's complement in the bits after the marker bit.
        let inv: u8 = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err(err());
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 != 0 {
            return Err(err());
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    let s = cstr(b);
    let s: &[u8] = {
        let start = s.iter().position(|&c| c != b' ').unwrap_or(s.len());
        let end = s.iter().rposition(|&c| c != b' ').map_or(start, |i| i + 1);
        &s[start..end.max(start)]
    };
    if s.is_empty() {
        return Ok(0);
    }
    let mut x: i64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return Err(err());
        }
        x = x
            .checked_mul(8)
            .and_then(|x| x.checked_add(i64::from(c - b'0')))
            .ok_or_else(err)?;
    }
    Ok(x)
}

fn checksum_ok(b: &[u8; BLOCK], at: u64) -> Result<bool, TarError> {
    let want = number(&b[148..156], at, "chksum")?;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    Ok(want == unsigned || want == signed)
}

/// Decode a non-zero header block found at stream offset `at`.
pub fn parse_header(b: &[u8; BLOCK], at: u64) -> Result<Header, TarError> {
    if !checksum_ok(b, at)? {
        return Err(TarError::Checksum(at));
    }
    let magic = &b[257..263];
    let ustar = magic == b"ustar\0";
    let mut name = cstr(&b[0..100]).to_vec();
    if ustar {
        // The star format keeps a trailer in the last 12 bytes of the prefix.
        let prefix = if &b[508..512] == b"tar\0" {
            &b[345..476]
        } else {
            &b[345..500]
        };
        let prefix = cstr(prefix);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let (uname, gname, devmajor, devminor) = if ustar || magic == b"ustar " {
        (
            cstr(&b[265..297]).to_vec(),
            cstr(&b[297..329]).to_vec(),
            number(&b[329..337], at, "devmajor")?,
            number(&b[337..345], at, "devminor")?,
        )
    } else {
        (Vec::new(), Vec::new(), 0, 0)
    };
    let size = number(&b[124..136], at, "size")?;
    if size < 0 {
        return Err(TarError::Number {
            offset: at,
            field: "size",
        });
    }
    Ok(Header {
        name,
        mode: number(&b[100..108], at, "mode")?,
        uid: number(&b[108..116], at, "uid")?,
        gid: number(&b[116..124], at, "gid")?,
        size,
        mtime: number(&b[136..148], at, "mtime")?,
        typeflag: b[156],
        linkname: cstr(&b[157..257]).to_vec(),
        uname,
        gname,
        devmajor,
        devminor,
    })
}

/// PAX extended header records (`"%d %s=%s\n"`), in order.
/// One PAX record: key and value bytes.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

pub fn parse_pax(mut data: &[u8], at: u64) -> Result<Vec<PaxRecord>, TarError> {
    let err = || TarError::Pax(at);
    let mut out = Vec::new();
    // Writers may pad the data with NULs.
    while !data.is_empty() && data[0] != 0 {
        let sp = data
            .iter()
            .take(20)
            .position(|&c| c == b' ')
            .ok_or_else(err)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(err)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(err());
        }
        let kv = &data[sp + 1..len - 1];
        let eq = kv.iter().position(|&c| c == b'=').ok_or_else(err)?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Zero bytes that pad `size` bytes of entry data to a whole block.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn put_octal(field: &mut [u8], v: u64) {
    // Leading zeros, then a NUL in the last byte (as Go's formatOctal does).
    let s = format!("{v:o}");
    let width = field.len() - 1;
    let s = format!("{s:0>width$}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

/// A ustar header for a regular file named `name` (< 100 bytes), mode 0,
/// owner 0, mtime 0: the reference's TOC and landmark entries exactly.
pub fn plain_reg_header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.as_bytes();
    b[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    put_octal(&mut b[100..108], 0);
    put_octal(&mut b[108..116], 0);
    put_octal(&mut b[116..124], 0);
    put_octal(&mut b[124..136], size);
    put_octal(&mut b[136..148], 0);
    b[156] = TYPE_REG;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    put_octal(&mut b[329..337], 0);
    put_octal(&mut b[337..345], 0);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
    put_octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_header_reads_back_with_tar_crate() {
        let mut data = plain_reg_header("stargz.index.json", 3).to_vec();
        data.extend_from_slice(b"abc");
        data.resize(BLOCK * 4, 0);
        let mut a = tar::Archive::new(&data[..]);
        let mut e = a.entries().unwrap();
        let first = e.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("stargz.index.json"));
        assert_eq!(first.header().size().unwrap(), 3);
        assert_eq!(first.header().mode().unwrap(), 0);
        let h = parse_header(&plain_reg_header("x", 7), 0).unwrap();
        assert_eq!(
            (h.size, h.typeflag, h.name.as_slice()),
            (7, TYPE_REG, &b"x"[..])
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0", 0, "m").unwrap(), 0o644);
        assert_eq!(number(b"   644 \0", 0, "m").unwrap(), 0o644);
        assert_eq!(number(b"\0\0\0", 0, "m").unwrap(), 0);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0], 0, "m").unwrap(), 256);
        assert_eq!(number(&[0xff; 8], 0, "m").unwrap(), -1);
        assert!(number(b"0009\0", 0, "m").is_err());
        assert!(number(
            &[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            0,
            "m"
        )
        .is_err());
        assert!(number(b"77777777777777777777777", 0, "m").is_err());
    }

    #[test]
    fn pax_records() {
        let r = parse_pax(b"11 path=ab\n21 SCHILY.xattr.a=\x00\x01\n", 0).unwrap();
        assert_eq!(r[0], (b"path".to_vec(), b"ab".to_vec()));
        assert_eq!(r[1], (b"SCHILY.xattr.a".to_vec(), vec![0, 1]));
        for bad in [
            &b"5 a=b\n"[..],
            b"x path=a\n",
            b"99 a=b\n",
            b"7 path=a\n",
            b"8 ab\n",
        ] {
            assert!(parse_pax(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checksum_is_checked() {
        let mut b = plain_reg_header("x", 1);
        b[0] = b'y';
        assert_eq!(parse_header(&b, 512).unwrap_err(), TarError::Checksum(512));
    }
}
