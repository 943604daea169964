//! Pure parser for `multipart/byteranges` bodies (RFC 9110 §14.6). Each part's
//! length is taken from its `Content-Range`, never by searching for the
//! boundary in the data, so data that contains the boundary is fine.

use crate::headers::parse_content_range;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("malformed multipart/byteranges body: {0}")]
    Malformed(&'static str),
}

/// One part: the blob bytes `first..=last` are `body[data]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub first: u64,
    pub last: u64,
    pub data: Range<usize>,
}

const MAX_PARTS: usize = 4096;
const MAX_PART_HEADERS: usize = 32;

pub fn parse_byteranges(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let m = MultipartError::Malformed;
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // The preamble (usually empty or a CRLF) ends at the first delimiter.
    let mut pos = find(body, delim, 0).ok_or(m("no boundary"))?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        pos = skip_line_end(body, pos).ok_or(m("boundary not followed by a line end"))?;
        let mut range = None;
        let mut headers = 0;
        loop {
            let end = find(body, b"\n", pos).ok_or(m("unterminated part header"))?;
            let line = &body[pos..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos = end + 1;
            if line.is_empty() {
                break;
            }
            headers += 1;
            if headers > MAX_PART_HEADERS {
                return Err(m("too many part headers"));
            }
            let line = std::str::from_utf8(line).map_err(|_| m("part header not UTF-8"))?;
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-range") {
                    let cr = parse_content_range(v).map_err(|_| m("bad part Content-Range"))?;
                    range = Some(cr.range.ok_or(m("part without a range"))?);
                }
            }
        }
        let (first, last) = range.ok_or(m("part without Content-Range"))?;
        let len = usize::try_from(last - first + 1).map_err(|_| m("part too large"))?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or(m("part data truncated"))?;
        parts.push(Part {
            first,
            last,
            data: pos..end,
        });
        if parts.len() > MAX_PARTS {
            return Err(m("too many parts"));
        }
        pos = skip_line_end(body, end).ok_or(m("part data not followed by a line end"))?;
        if !body[pos..].starts_with(delim) {
            return Err(m("part data not followed by the boundary"));
        }
    }
}

fn skip_line_end(b: &[u8], pos: usize) -> Option<usize> {
    if b[pos..].starts_with(b"\r\n") {
        Some(pos + 2)
    } else if b[pos..].starts_with(b"\n") {
        Some(pos + 1)
    } else {
        None
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(u64, &[u8])], total: u64) -> Vec<u8> {
        let mut b = Vec::new();
        for (off, data) in parts {
            b.extend_from_slice(b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n");
            let last = off + data.len() as u64 - 1;
            b.extend_from_slice(
                format!("Content-Range: bytes {off}-{last}/{total}\r\n\r\n").as_bytes(),
            );
            b.extend_from_slice(data);
        }
        b.extend_from_slice(b"\r\n--XYZ--\r\n");
        b
    }

    #[test]
    fn parses_parts_even_when_data_contains_the_boundary() {
        let b = body(&[(0, b"ab\r\n--XYZ\r\n"), (100, b"z")], 200);
        let p = parse_byteranges(&b, "XYZ").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(&b[p[0].data.clone()], b"ab\r\n--XYZ\r\n");
        assert_eq!((p[1].first, p[1].last), (100, 100));
        assert_eq!(&b[p[1].data.clone()], b"z");
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        let b = body(&[(0, b"abcdef")], 10);
        for cut in 0..b.len() - 8 {
            assert!(parse_byteranges(&b[..cut], "XYZ").is_err(), "cut at {cut}");
        }
        assert!(parse_byteranges(b"--XYZ\r\n\r\nabc", "XYZ").is_err());
        assert!(parse_byteranges(b"nothing", "XYZ").is_err());
    }
}
