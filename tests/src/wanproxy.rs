//! A WAN-profile TCP proxy on 127.0.0.1: put in front of the registry so a
//! benchmark sees a distant registry on a machine that has only loopback
//! (the kernel here has no `netem`).
//!
//! The model is a pipe with latency behind a bottleneck link, per direction:
//! bytes read from one side at `t` are queued on the link (shared by every
//! connection going that way, as a real link is), leave it when their turn
//! and the bandwidth allow, and reach the other side `delay` later. Data in
//! flight is delivered chunk by chunk, so a response streams in at the link
//! rate one delay after it was sent (it is not one delay per connection or
//! per request). A new connection pays one round trip before its first byte
//! goes out, as a TCP handshake would. Not modelled: slow start, loss.
//!
//! The cap is a virtual-clock shaper (a token bucket that may go into debt by
//! one read): a read of `n` bytes occupies the link for `n / rate`, so over
//! any interval the bytes delivered never exceed `rate × interval` plus one
//! read. `bits_per_sec == 0` means no cap and `delay == 0` no delay; with both
//! the proxy is a plain byte counter.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Largest piece read and forwarded at once: 64 KiB is 2.6 ms on a
/// 200 Mbit/s link, fine enough for the delay and the cap to be smooth.
const READ_BYTES: usize = 64 * 1024;
/// Pieces buffered per direction and connection before the proxy stops
/// reading (4 MiB): back-pressure instead of an unbounded queue.
const QUEUE_PIECES: usize = 64;

/// One direction of the emulated link: a FIFO bottleneck with a rate.
struct Link {
    /// Bytes per second; 0 = unlimited.
    rate: f64,
    /// When the link finishes sending what is already queued on it.
    free_at: Mutex<Instant>,
}

impl Link {
    fn new(bits_per_sec: u64) -> Link {
        Link {
            rate: bits_per_sec as f64 / 8.0,
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Queue `n` bytes ready at `ready`; returns when their last bit leaves.
    fn transmit(&self, n: usize, ready: Instant) -> Instant {
        if self.rate <= 0.0 {
            return ready;
        }
        let mut free = self.free_at.lock().unwrap();
        let start = (*free).max(ready);
        let end = start + Duration::from_secs_f64(n as f64 / self.rate);
        *free = end;
        end
    }
}

/// Byte counters and link state shared by all connections of one proxy.
struct Shared {
    upstream: SocketAddr,
    delay: Duration,
    to_upstream: Link,
    to_client: Link,
    /// Bytes delivered to clients (from the registry).
    down: AtomicU64,
    /// Bytes delivered to the upstream (requests).
    up: AtomicU64,
    connections: AtomicU64,
}

pub struct WanProxy {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl WanProxy {
    /// A proxy on a free 127.0.0.1 port in front of `127.0.0.1:upstream_port`.
    /// Panics if it cannot bind (tests).
    pub fn start(upstream_port: u16, delay: Duration, bits_per_sec: u64) -> WanProxy {
        let up = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        WanProxy::bind(0, up, delay, bits_per_sec).expect("start the WAN proxy")
    }

    /// A proxy on `127.0.0.1:listen_port` (0 = any free port) in front of `upstream`.
    pub fn bind(
        listen_port: u16,
        upstream: SocketAddr,
        delay: Duration,
        bits_per_sec: u64,
    ) -> io::Result<WanProxy> {
        let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
        let port = listener.local_addr()?.port();
        // Non-blocking accept so that drop can stop the loop.
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            upstream,
            delay,
            to_upstream: Link::new(bits_per_sec),
            to_client: Link::new(bits_per_sec),
            down: AtomicU64::new(0),
            up: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let accept = thread::spawn(move || accept_loop(listener, sh, st));
        Ok(WanProxy {
            port,
            shared,
            stop,
            accept: Some(accept),
        })
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes delivered from the upstream (registry) to clients.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::Relaxed)
    }

    /// Bytes delivered from clients to the upstream.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.shared.down.store(0, Ordering::Relaxed);
        self.shared.up.store(0, Ordering::Relaxed);
        self.shared.connections.store(0, Ordering::Relaxed);
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let accepted = Instant::now();
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                match TcpStream::connect(shared.upstream) {
                    Ok(up) => {
                        let _ = up.set_nodelay(true);
                        if let Err(e) = start_pipes(client, up, &shared, accepted) {
                            eprintln!("wanproxy: {e}");
                        }
                    }
                    // Dropping the client closes it: the caller sees the
                    // upstream is down, as it would without the proxy.
                    Err(e) => eprintln!("wanproxy: connect {}: {e}", shared.upstream),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(e) => {
                eprintln!("wanproxy: accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A piece of data and when it reaches the far side; `None` data = EOF.
type Piece = (Instant, Option<Vec<u8>>);

fn start_pipes(
    client: TcpStream,
    up: TcpStream,
    shared: &Arc<Shared>,
    accepted: Instant,
) -> io::Result<()> {
    let (c2, u2) = (client.try_clone()?, up.try_clone()?);
    // The client believes it is connected at once; a real one would wait a
    // round trip for the handshake before sending anything.
    let handshake_done = accepted + shared.delay * 2;
    spawn_direction(client, up, shared.clone(), true, handshake_done);
    spawn_direction(u2, c2, shared.clone(), false, accepted);
    Ok(())
}

fn spawn_direction(
    from: TcpStream,
    to: TcpStream,
    shared: Arc<Shared>,
    to_upstream: bool,
    not_before: Instant,
) {
    let (tx, rx) = sync_channel::<Piece>(QUEUE_PIECES);
    let sh = shared.clone();
    thread::spawn(move || reader(from, tx, &sh, to_upstream, not_before));
    thread::spawn(move || writer(rx, to, &shared, to_upstream));
}

/// Reads as data arrives and stamps each piece with its arrival time at
/// the far side; never waits for the delay itself, so pieces stay in flight
/// together.
fn reader(
    mut from: TcpStream,
    tx: SyncSender<Piece>,
    shared: &Shared,
    to_upstream: bool,
    not_before: Instant,
) {
    let link = if to_upstream {
        &shared.to_upstream
    } else {
        &shared.to_client
    };
    let mut last = not_before;
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let ready = Instant::now().max(not_before);
        if n == 0 {
            // The FIN travels like data: after what is in flight.
            let _ = tx.send((last.max(ready + shared.delay), None));
            return;
        }
        let arrive = link.transmit(n, ready) + shared.delay;
        last = arrive;
        if tx.send((arrive, Some(buf[..n].to_vec()))).is_err() {
            // The writer gave up (far side closed): stop reading too.
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}

fn writer(rx: Receiver<Piece>, mut to: TcpStream, shared: &Shared, to_upstream: bool) {
    let counter = if to_upstream {
        &shared.up
    } else {
        &shared.down
    };
    for (arrive, data) in rx {
        let now = Instant::now();
        if arrive > now {
            thread::sleep(arrive - now);
        }
        match data {
            Some(d) => {
                // Counted before the write so that a client that has read
                // everything also sees the full count.
                counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                if to.write_all(&d).is_err() {
                    break;
                }
            }
            None => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each connection by running `serve` on it.
    fn upstream(serve: fn(TcpStream)) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || serve(s));
            }
        });
        port
    }

    fn echo(mut s: TcpStream) {
        let mut b = [0u8; 4096];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 || s.write_all(&b[..n]).is_err() {
                break;
            }
        }
    }

    /// Reads an 8-byte big-endian length, then sends that many bytes.
    fn source(mut s: TcpStream) {
        let mut len = [0u8; 8];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut left = u64::from_be_bytes(len) as usize;
        let block = vec![7u8; 256 * 1024];
        while left > 0 {
            let n = left.min(block.len());
            if s.write_all(&block[..n]).is_err() {
                return;
            }
            left -= n;
        }
    }

    /// Asks the proxy's upstream `source` for `n` bytes; returns the time
    /// from the request to the last byte.
    fn download(port: u16, n: u64) -> Duration {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let t = Instant::now();
        s.write_all(&n.to_be_bytes()).unwrap();
        let mut got = 0u64;
        let mut b = vec![0u8; 64 * 1024];
        while got < n {
            let k = s.read(&mut b).unwrap();
            assert!(k > 0, "early EOF after {got} of {n}");
            got += k as u64;
        }
        t.elapsed()
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn round_trips_cost_two_delays_and_connecting_one_more() {
        let p = WanProxy::start(upstream(echo), Duration::from_millis(40), 0);
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        let mut b = [0u8; 1];
        let t = Instant::now();
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
        let first = t.elapsed();
        let t = Instant::now();
        s.write_all(b"y").unwrap();
        s.read_exact(&mut b).unwrap();
        let second = t.elapsed();
        // handshake (80) + there (40) + back (40)
        assert!((150..260).contains(&ms(first)), "first {first:?}");
        assert!((80..150).contains(&ms(second)), "second {second:?}");
        assert_eq!(b, *b"y");
        assert_eq!((p.bytes_up(), p.bytes_down(), p.connections()), (2, 2, 1));
    }

    #[test]
    fn data_in_flight_is_pipelined_not_delayed_piece_by_piece() {
        // Ten pieces 20 ms apart through a 100 ms pipe arrive 20 ms apart,
        // the first one 100 ms after it was sent (a stop-and-wait proxy
        // would take over a second).
        fn ticker(mut s: TcpStream) {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            for i in 0..10u8 {
                let _ = s.write_all(&[i]);
                thread::sleep(Duration::from_millis(20));
            }
        }
        let p = WanProxy::start(upstream(ticker), Duration::from_millis(100), 0);
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        // Past the emulated handshake, so only the one-way delays count.
        thread::sleep(Duration::from_millis(210));
        let t = Instant::now();
        s.write_all(b"go").unwrap();
        let mut arrivals = Vec::new();
        let mut b = [0u8; 1];
        for i in 0..10u8 {
            s.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i);
            arrivals.push(t.elapsed());
        }
        // 100 there + 100 back before the first; then the ticker's pace.
        assert!((195..300).contains(&ms(arrivals[0])), "{arrivals:?}");
        let spread = arrivals[9] - arrivals[0];
        assert!((150..260).contains(&ms(spread)), "{arrivals:?}");
    }

    #[test]
    fn bandwidth_cap_holds_over_the_transfer_and_across_connections() {
        // 16 Mbit/s = 2 MB/s: 2 MB take a second (plus one round trip).
        let p = WanProxy::start(upstream(source), Duration::from_millis(5), 16_000_000);
        let one = download(p.port, 2_000_000);
        assert!((990..1400).contains(&ms(one)), "one connection: {one:?}");

        // Two connections at once share the link: 2 × 1 MB also take a second.
        let port = p.port;
        let t = Instant::now();
        let a = thread::spawn(move || download(port, 1_000_000));
        let b = thread::spawn(move || download(port, 1_000_000));
        let (da, db) = (a.join().unwrap(), b.join().unwrap());
        let both = t.elapsed();
        assert!(
            (990..1400).contains(&ms(both)),
            "two: {da:?} {db:?} {both:?}"
        );
        assert_eq!(p.bytes_down(), 4_000_000);
        assert_eq!(p.connections(), 3);
    }

    #[test]
    fn without_delay_and_cap_it_only_counts() {
        let p = WanProxy::start(upstream(source), Duration::ZERO, 0);
        let d = download(p.port, 64 << 20);
        assert!(d < Duration::from_secs(5), "64 MiB took {d:?}");
        assert_eq!(p.bytes_down(), 64 << 20);
        p.reset();
        assert_eq!(p.bytes_down(), 0);
    }
}
