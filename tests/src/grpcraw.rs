//! A bare HTTP/2 gRPC client over a unix socket that sends whatever
//! `:authority` it is given, as grpc-go (a path), grpc-java and Python grpc
//! (a percent-encoded path) do when they dial a socket by its path. Neither
//! tonic nor the `http` crate can build such a request, so the frames are
//! written by hand; the reply's headers are HPACK-decoded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// How the server answered one unary call.
#[derive(Debug, Default)]
pub struct Reply {
    /// Response headers and trailers, in order.
    pub headers: Vec<(String, String)>,
    /// The response message(s) without gRPC framing.
    pub messages: Vec<Vec<u8>>,
    /// The RST_STREAM error code, if the server reset the stream
    /// (1 = PROTOCOL_ERROR).
    pub reset: Option<u32>,
}

impl Reply {
    /// The value of header or trailer `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Call `method` (e.g. `/pkg.Service/Method`) with the protobuf bytes
/// `message` on the gRPC server at `socket`, sending `authority`.
pub fn unary(
    socket: &Path,
    authority: &str,
    method: &str,
    message: &[u8],
) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // Literal with incremental indexing, new name: as clients do, so
        // the server's decoder table holds the authority too.
        block.push(0x40);
        for text in [n, v] {
            // A string literal: no Huffman bit, 7-bit prefix length.
            block.push(0);
            hpack_int(&mut block, 7, text.len());
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, HEADERS, END_HEADERS, 1, &block);
    frame(&mut out, DATA, END_STREAM, 1, &body);
    s.write_all(&out)?;

    let mut decoder = loona_hpack::Decoder::new();
    let mut reply = Reply::default();
    let mut data = Vec::new();
    loop {
        let mut h = [0u8; 9];
        s.read_exact(&mut h)?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                s.write_all(&ack)?;
            }
            PING if flags & ACK == 0 => {
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload);
                s.write_all(&pong)?;
            }
            GOAWAY => {
                return Err(std::io::Error::other(format!(
                    "GOAWAY: {:?}",
                    String::from_utf8_lossy(&payload)
                )))
            }
            RST_STREAM if stream == 1 => {
                reply.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                return Ok(reply);
            }
            // The server's blocks are small: no padding, priority or
            // CONTINUATION to expect.
            HEADERS if stream == 1 => {
                let fields = decoder
                    .decode(&payload)
                    .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
                for (n, v) in fields {
                    reply.headers.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            DATA if stream == 1 => {
                data.extend_from_slice(&payload);
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    let mut d = &data[..];
    while d.len() >= 5 {
        let n = u32::from_be_bytes(d[1..5].try_into().unwrap()) as usize;
        reply.messages.push(d[5..5 + n.min(d.len() - 5)].to_vec());
        d = &d[(5 + n).min(d.len())..];
    }
    Ok(reply)
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1), ORed into the
/// last byte of `out` (which holds the representation's flag bits).
fn hpack_int(out: &mut Vec<u8>, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    let last = out.len() - 1;
    if v < max {
        out[last] |= v as u8;
        return;
    }
    out[last] |= max as u8;
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A protobuf message of string fields (field number, value), e.g. a
/// snapshots `StatSnapshotRequest { snapshotter: 1, key: 2 }`.
pub fn proto_strings(fields: &[(u32, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (num, s) in fields {
        varint(&mut out, u64::from(num << 3 | 2));
        varint(&mut out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `path` percent-encoded the way Python grpc and grpc-java send it.
pub fn percent_encode(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_with_a_prefix() {
        let mut v = vec![0x40];
        hpack_int(&mut v, 7, 10);
        assert_eq!(v, [0x4a]);
        let mut v = vec![0x00];
        hpack_int(&mut v, 5, 1337);
        assert_eq!(v, [31, 154, 10]); // RFC 7541 C.1.2
    }

    #[test]
    fn protobuf_strings() {
        assert_eq!(proto_strings(&[(2, "ab")]), [0x12, 2, b'a', b'b']);
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("/run/a b.sock"), "%2Frun%2Fa%20b.sock");
    }
}
