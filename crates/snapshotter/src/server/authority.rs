//! Accepting any HTTP/2 `:authority` on a unix socket.
//!
//! gRPC clients that dial a unix socket by its path (grpc-go with a
//! passthrough target, grpc-java, Python grpc >= 1.57) send the path, or its
//! percent-encoding, as `:authority`. h2 (0.4) refuses such a request with
//! `RST_STREAM(PROTOCOL_ERROR)` before tonic sees it: `Peer::convert_poll_message`
//! in h2's `src/server.rs` parses the value with `http::uri::Authority` and has
//! no lenient setting. On a unix socket the authority names nothing, so
//! [`AnyAuthority`] sits between the socket and h2 and drops an `:authority`
//! that h2 would refuse.
//!
//! It reads the client's frames: everything but header blocks (HEADERS and
//! their CONTINUATIONs) streams through untouched. Every header block is
//! HPACK-decoded, so the client's dynamic table is followed, and passed on
//! byte for byte while its authorities are valid. From the first invalid one
//! on, the connection's header blocks are re-encoded without the dynamic
//! table (literal fields only) and without that authority; h2's own decoder
//! then never needs the entries it did not see. What the server writes is
//! not touched.

use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE h2 announces unless told otherwise (RFC 9113's
/// initial value); frames we write stay within it.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (h2's own limit on
/// the decoded list is 16 MiB; gRPC metadata is a few hundred bytes).
const MAX_BLOCK: usize = 1 << 20;

/// A client connection whose header blocks lose an `:authority` that h2
/// would refuse. Reads are filtered; writes go straight to `inner`.
pub struct AnyAuthority<S> {
    inner: S,
    /// Bytes read from `inner`, not yet looked at.
    raw: BytesMut,
    /// Bytes ready for h2.
    out: BytesMut,
    /// Preface bytes still to pass through.
    preface: usize,
    /// Payload bytes of a non-header frame still to pass through.
    passing: usize,
    /// A HEADERS frame waiting for its CONTINUATIONs.
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    /// Re-encoding header blocks (after the first invalid authority).
    rewriting: bool,
    eof: bool,
}

struct Pending {
    stream: u32,
    flags: u8,
    /// Stream dependency and weight, when the PRIORITY flag is set.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as received, for passing them on unchanged.
    raw: Vec<u8>,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> AnyAuthority<S> {
        AnyAuthority {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            preface: PREFACE_LEN,
            passing: 0,
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            rewriting: false,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Move what can be decided from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.preface > 0 {
                let n = self.preface.min(self.raw.len());
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.preface -= n;
                if self.preface > 0 {
                    return Ok(());
                }
            }
            if self.passing > 0 {
                let n = self.passing.min(self.raw.len());
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.passing -= n;
                if self.passing > 0 {
                    return Ok(());
                }
            }
            if self.raw.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let h = &self.raw[..FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let header_frame = kind == HEADERS || (kind == CONTINUATION && self.pending.is_some());
            if !header_frame {
                // Out of order for HTTP/2: h2 will say so; pass everything on.
                if let Some(p) = self.pending.take() {
                    self.out.extend_from_slice(&p.raw);
                }
                self.out
                    .extend_from_slice(&self.raw.split_to(FRAME_HEADER_LEN));
                self.passing = len;
                continue;
            }
            if len > MAX_BLOCK {
                return Err(invalid("header frame too large"));
            }
            if self.raw.len() < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
            let payload = &frame[FRAME_HEADER_LEN..];
            let mut p = match self.pending.take() {
                Some(mut p) if kind == CONTINUATION && p.stream == stream => {
                    p.block.extend_from_slice(payload);
                    p.raw.extend_from_slice(&frame);
                    p
                }
                Some(p) => {
                    // A CONTINUATION of another stream: a protocol error h2
                    // reports; this connection is over.
                    self.out.extend_from_slice(&p.raw);
                    self.out.extend_from_slice(&frame);
                    continue;
                }
                None => {
                    let (priority, block) = split_headers_payload(flags, payload)
                        .ok_or_else(|| invalid("malformed HEADERS frame"))?;
                    Pending {
                        stream,
                        flags,
                        priority,
                        block: block.to_vec(),
                        raw: frame.to_vec(),
                    }
                }
            };
            if p.block.len() > MAX_BLOCK {
                return Err(invalid("header block too large"));
            }
            let end = if kind == CONTINUATION { flags } else { p.flags };
            if end & END_HEADERS == 0 {
                self.pending = Some(p);
                continue;
            }
            self.header_block(&mut p)?;
        }
    }

    /// Decode a complete header block and pass it on, or its rewrite.
    fn header_block(&mut self, p: &mut Pending) -> io::Result<()> {
        let mut fields = Vec::new();
        self.decoder
            .decode_with_cb(&p.block, |n, v| {
                fields.push((n.into_owned(), v.into_owned()))
            })
            .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
        let refused = |(n, v): &(Vec<u8>, Vec<u8>)| {
            n == b":authority" && http::uri::Authority::try_from(v.as_slice()).is_err()
        };
        if fields.iter().any(refused) {
            if !self.rewriting {
                tracing::debug!(
                    "a client sent an :authority h2 refuses; dropping such authorities"
                );
            }
            self.rewriting = true;
        }
        if !self.rewriting {
            self.out.extend_from_slice(&p.raw);
            return Ok(());
        }
        let mut block = Vec::with_capacity(p.block.len() * 2);
        for f in fields.iter().filter(|f| !refused(f)) {
            encode_literal(&mut block, &f.0, &f.1);
        }
        write_header_frames(&mut self.out, p.stream, p.flags, p.priority, &block);
        Ok(())
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A HEADERS payload without its padding: (priority fields, block fragment).
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(p.get(..5)?.try_into().ok()?);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// One header field as "literal without indexing, new name" (RFC 7541
/// 6.2.2), strings without Huffman coding: touches no dynamic table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        encode_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1); `first` holds
/// the bits above the prefix.
fn encode_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A HEADERS frame (and CONTINUATIONs) carrying `block`: END_STREAM kept
/// from `flags`, PRIORITY when `priority` is given, no padding.
fn write_header_frames(
    out: &mut BytesMut,
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(MAX_FRAME - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut f = flags & END_STREAM;
    if priority.is_some() {
        f |= PRIORITY;
    }
    if rest.is_empty() {
        f |= END_HEADERS;
    }
    frame_header(out, prio_len + first.len(), HEADERS, f, stream);
    if let Some(p) = priority {
        out.put_slice(&p);
    }
    out.put_slice(first);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = r;
        let f = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, f, stream);
        out.put_slice(chunk);
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame: hand h2 what there is and let it judge.
                if let Some(p) = this.pending.take() {
                    this.out.extend_from_slice(&p.raw);
                }
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                        this.process()?;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        frame_header(&mut b, payload.len(), kind, flags, stream);
        b.put_slice(payload);
        b.to_vec()
    }

    /// Fields of an HPACK block, incremental indexing (the dynamic table
    /// grows, as real clients do).
    fn indexed_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            // Literal with incremental indexing, new name.
            out.push(0x40);
            encode_int(&mut out, 0, 7, n.len());
            out.extend_from_slice(n.as_bytes());
            encode_int(&mut out, 0, 7, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Everything `AnyAuthority` yields for `input`, read in small pieces.
    async fn filtered(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut out = Vec::new();
        AnyAuthority::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap();
        drop(writer.await.unwrap());
        out
    }

    type Fields = Vec<(String, String)>;

    /// Decoded header blocks of the frames after the preface, and the other
    /// frames (type, payload).
    fn headers_of(bytes: &[u8]) -> (Vec<Fields>, Vec<(u8, Vec<u8>)>) {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut dec = loona_hpack::Decoder::new();
        let (mut blocks, mut others, mut block) = (Vec::new(), Vec::new(), Vec::new());
        let mut b = &bytes[PREFACE_LEN..];
        while !b.is_empty() {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let (kind, flags) = (b[3], b[4]);
            let payload = &b[9..9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                let frag = if kind == HEADERS {
                    split_headers_payload(flags, payload).unwrap().1
                } else {
                    payload
                };
                block.extend_from_slice(frag);
                if flags & END_HEADERS != 0 {
                    let fields = dec.decode(&block).unwrap();
                    blocks.push(
                        fields
                            .into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            } else {
                others.push((kind, payload.to_vec()));
            }
            b = &b[9 + len..];
        }
        (blocks, others)
    }

    fn request(authority: &str) -> Vec<(&str, &str)> {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/containerd.services.snapshots.v1.Snapshots/List"),
            (":authority", authority),
            ("content-type", "application/grpc"),
        ]
    }

    #[tokio::test]
    async fn valid_authorities_pass_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &indexed_block(&request("localhost")),
        ));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0])); // DATA
        assert_eq!(filtered(input.clone()).await, input);
    }

    #[tokio::test]
    async fn a_path_authority_is_dropped_and_later_blocks_stay_decodable() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &indexed_block(&request("localhost")),
        ));
        // Stream 3: a path authority, split over a padded HEADERS and a
        // CONTINUATION.
        let block = indexed_block(&request("/run/x.sock"));
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | END_STREAM, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        // Stream 5 refers to the dynamic table entries stream 3 added
        // (62 is the newest: content-type; 63 its refused authority; 64 :path).
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            5,
            &[0x80 | 62, 0x80 | 63, 0x80 | 64],
        ));
        input.extend(frame(0x0, END_STREAM, 5, b"x"));
        let (blocks, others) = headers_of(&filtered(input).await);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0][3], (":authority".into(), "localhost".into()));
        assert!(
            !blocks[1].iter().any(|(n, _)| n == ":authority"),
            "{:?}",
            blocks[1]
        );
        assert_eq!(blocks[1].len(), 4);
        assert_eq!(
            blocks[2],
            vec![
                ("content-type".into(), "application/grpc".into()),
                (
                    ":path".into(),
                    "/containerd.services.snapshots.v1.Snapshots/List".into()
                ),
            ]
        );
        assert_eq!(others, vec![(0x4, vec![]), (0x0, b"x".to_vec())]);
    }

    #[tokio::test]
    async fn a_percent_encoded_path_is_refused_by_http_and_dropped() {
        assert!(http::uri::Authority::try_from("%2Frun%2Fx.sock").is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &indexed_block(&request("%2Frun%2Fx.sock")),
        ));
        let (blocks, _) = headers_of(&filtered(input).await);
        assert!(!blocks[0].iter().any(|(n, _)| n == ":authority"));
    }

    #[test]
    fn long_blocks_are_split_into_continuations() {
        let block = vec![0u8; MAX_FRAME * 2 + 10];
        let mut out = BytesMut::new();
        write_header_frames(&mut out, 7, END_STREAM | PADDED, Some([0; 5]), &block);
        let kinds: Vec<(u8, u8)> = {
            let mut b = &out[..];
            let mut v = Vec::new();
            while !b.is_empty() {
                let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
                assert!(len <= MAX_FRAME);
                v.push((b[3], b[4]));
                b = &b[9 + len..];
            }
            v
        };
        assert_eq!(
            kinds,
            vec![
                (HEADERS, END_STREAM | PRIORITY),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
    }

    #[test]
    fn hpack_integers() {
        let mut v = Vec::new();
        encode_int(&mut v, 0, 7, 126);
        assert_eq!(v, [126]);
        v.clear();
        encode_int(&mut v, 0, 5, 1337);
        assert_eq!(v, [31, 154, 10]); // RFC 7541 C.1.2
    }
}
