//! Compress members on every core and hand them over in order.
//!
//! Workers claim members in order while the bytes claimed but not yet
//! handed over stay under a budget; the caller's thread consumes results
//! in order. No barrier between batches, so no core waits for the slowest
//! member of a batch, and memory stays near `budget` (plus one member per
//! worker).

use super::{compress, Codec, Compressed, Member};
use crate::blob::ReadAt;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Condvar, Mutex};

struct State {
    /// Next member to claim.
    next: usize,
    /// Results waiting to be handed over, by member.
    done: BTreeMap<usize, io::Result<Compressed>>,
    /// Uncompressed bytes claimed and not yet handed over.
    in_flight: u64,
    /// The consumer gave up: workers stop.
    stop: bool,
}

pub(super) fn run<S, F>(
    src: &S,
    members: &[Member],
    codec: Codec,
    budget: u64,
    mut sink: F,
) -> Result<()>
where
    S: ReadAt + Sync + ?Sized,
    F: FnMut(&Member, Compressed) -> Result<()>,
{
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(members.len().max(1));
    let state = Mutex::new(State {
        next: 0,
        done: BTreeMap::new(),
        in_flight: 0,
        stop: false,
    });
    let cv = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            handles.push(s.spawn(|| loop {
                let i = {
                    let mut g = lock();
                    // Always let the oldest pending member through, or nothing would move.
                    while !g.stop
                        && g.next < members.len()
                        && g.in_flight >= budget
                        && g.in_flight > 0
                    {
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    if g.stop || g.next >= members.len() {
                        return;
                    }
                    g.next += 1;
                    g.in_flight += members[g.next - 1].len();
                    g.next - 1
                };
                let r = compress(src, &members[i], codec);
                lock().done.insert(i, r);
                cv.notify_all();
            }));
        }
        let result = (|| {
            for (i, m) in members.iter().enumerate() {
                let r = {
                    let mut g = lock();
                    loop {
                        if let Some(r) = g.done.remove(&i) {
                            g.in_flight -= m.len();
                            break r;
                        }
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                };
                cv.notify_all();
                sink(m, r.map_err(Error::Io)?)?;
            }
            Ok(())
        })();
        lock().stop = true;
        cv.notify_all();
        // Join explicitly: `scope` alone returns once the closures are done,
        // possibly before the threads have exited and freed their
        // thread-local destructor lists (LeakSanitizer then reports a leak).
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    })
}
