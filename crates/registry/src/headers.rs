//! Pure parsers for the HTTP headers a registry sends us: `WWW-Authenticate`
//! challenges, `Content-Range`, `Retry-After` and the multipart boundary.
//! No I/O here, so they can be fuzzed directly.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("malformed WWW-Authenticate: {0}")]
    Challenge(&'static str),
    #[error("malformed Content-Range: {0}")]
    ContentRange(&'static str),
}

/// One auth challenge: a scheme (lower-cased) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const MAX_HEADER: usize = 16 * 1024;

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c)
}

/// Parse `WWW-Authenticate`, which may carry several challenges:
/// `Bearer realm="https://a/token",service="reg",scope="repository:x:pull", Basic realm="r"`.
pub fn parse_www_authenticate(value: &str) -> Result<Vec<Challenge>, HeaderError> {
    if value.len() > MAX_HEADER {
        return Err(HeaderError::Challenge("too long"));
    }
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        // A token: either a new scheme or a parameter name of the current one.
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(HeaderError::Challenge("expected a token"));
        }
        let token = &value[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        let is_param = j < b.len() && b[j] == b'=' && !out.is_empty() && {
            // `token68` values end in '=' padding; a param has a value after '='.
            let mut k = j + 1;
            while k < b.len() && b[k] == b'=' {
                k += 1;
            }
            k == j + 1
        };
        if !is_param {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
            continue;
        }
        i = j + 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(HeaderError::Challenge("unterminated quoted string")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b
                            .get(i + 1)
                            .ok_or(HeaderError::Challenge("dangling escape"))?;
                        v.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| HeaderError::Challenge("not UTF-8"))?
        } else {
            let s = i;
            while i < b.len() && b[i] != b',' && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
            value[s..i].to_string()
        };
        let last = out.last_mut().expect("checked non-empty");
        if last.params.len() >= 64 {
            return Err(HeaderError::Challenge("too many parameters"));
        }
        last.params.push((token.to_ascii_lowercase(), val));
    }
    if out.is_empty() {
        return Err(HeaderError::Challenge("empty"));
    }
    Ok(out)
}

/// A parsed `Content-Range: bytes first-last/total` (total may be `*`), or
/// `bytes */total` (no range: the answer to an unsatisfiable request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub range: Option<(u64, u64)>,
    pub total: Option<u64>,
}

pub fn parse_content_range(value: &str) -> Result<ContentRange, HeaderError> {
    let e = HeaderError::ContentRange;
    let v = value.trim();
    let rest = v
        .strip_prefix("bytes")
        .ok_or(e("unit is not bytes"))?
        .trim_start_matches([' ', '=']);
    let (range, total) = rest.split_once('/').ok_or(e("missing '/'"))?;
    let total = match total.trim() {
        "*" => None,
        t => Some(parse_u64(t).ok_or(e("bad total"))?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-').ok_or(e("missing '-'"))?;
            let a = parse_u64(a).ok_or(e("bad first byte"))?;
            let b = parse_u64(b).ok_or(e("bad last byte"))?;
            if b < a {
                return Err(e("last before first"));
            }
            if let Some(t) = total {
                if b >= t {
                    return Err(e("range past total"));
                }
            }
            Some((a, b))
        }
    };
    if range.is_none() && total.is_none() {
        return Err(e("neither range nor total"));
    }
    Ok(ContentRange { range, total })
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and
/// is treated as absent, so the caller's own backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_u64(value.trim()).map(Duration::from_secs)
}

/// The boundary of a `multipart/byteranges` content type, if it is one.
pub fn byteranges_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some(kv) => kv,
            None => continue,
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim().trim_matches('"');
            // RFC 2046: 1..70 characters.
            if !v.is_empty() && v.len() <= 70 {
                return Some(v.to_string());
            }
            return None;
        }
    }
    None
}

/// `bytes=a-b,c-d` for `(offset, len)` pairs (len > 0).
pub fn format_ranges(ranges: &[(u64, u64)]) -> String {
    let mut s = String::from("bytes=");
    for (i, (off, len)) in ranges.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{}-{}", off, off + len - 1));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("scope"), Some("repository:library/a:pull,push"));
    }

    #[test]
    fn several_challenges_and_escapes() {
        let c =
            parse_www_authenticate(r#"Basic realm="a \"b\"", Bearer realm=x, error=invalid_token"#)
                .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some("a \"b\""));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("x"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        assert!(parse_www_authenticate(r#"Bearer realm="x"#).is_err());
        assert!(parse_www_authenticate("").is_err());
        assert!(parse_www_authenticate("=").is_err());
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-9/100").unwrap(),
            ContentRange {
                range: Some((0, 9)),
                total: Some(100)
            }
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*").unwrap().range,
            Some((5, 5))
        );
        assert_eq!(parse_content_range("bytes */42").unwrap().total, Some(42));
        for bad in [
            "bytes 9-0/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes 0-/2",
            "bytes */*",
            "bytes -1-2/3",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn boundary_and_ranges() {
        assert_eq!(
            byteranges_boundary("multipart/byteranges; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            byteranges_boundary("Multipart/Byteranges;boundary=\"q z\"").as_deref(),
            Some("q z")
        );
        assert_eq!(byteranges_boundary("application/octet-stream"), None);
        assert_eq!(format_ranges(&[(0, 10), (20, 1)]), "bytes=0-9,20-20");
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
