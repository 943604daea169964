//! Untrusted registry answers: WWW-Authenticate, Content-Range, Retry-After,
//! multipart/byteranges bodies, and references/digests. None may panic, and
//! every multipart part must lie inside the body with the length its
//! Content-Range claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::headers::{byteranges_boundary, parse_content_range, parse_retry_after, parse_www_authenticate};
use registry::multipart::parse_byteranges;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match sel % 4 {
        0 => {
            if let Ok(cs) = parse_www_authenticate(&text) {
                assert!(!cs.is_empty());
                for c in cs {
                    let _ = c.param("realm");
                }
            }
        }
        1 => {
            if let Ok(cr) = parse_content_range(&text) {
                if let Some((a, b)) = cr.range {
                    assert!(a <= b);
                    assert!(cr.total.is_none_or(|t| b < t));
                }
            }
            let _ = parse_retry_after(&text);
        }
        2 => {
            // First line: a Content-Type; the rest: the body.
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let ct = String::from_utf8_lossy(&rest[..split]);
            let body = rest.get(split + 1..).unwrap_or(&[]);
            let boundary = byteranges_boundary(&ct).unwrap_or_else(|| "B".to_string());
            if let Ok(parts) = parse_byteranges(body, &boundary) {
                for p in parts {
                    assert!(p.data.end <= body.len());
                    assert_eq!((p.data.end - p.data.start) as u64, p.last - p.first + 1);
                }
            }
        }
        _ => {
            if let Ok(r) = registry::Reference::parse(&text) {
                // Display round-trips.
                assert_eq!(registry::Reference::parse(&r.to_string()).unwrap(), r);
            }
            let _ = registry::Digest::parse(&text);
        }
    }
});
