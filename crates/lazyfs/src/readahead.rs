//! Adaptive readahead: how far ahead of a reader to fetch, from where its
//! reads fall. A window starts small after a jump and doubles each time the
//! reader has consumed half of what was fetched ahead, up to the configured
//! maximum. So a sequential reader soon has megabytes in flight, and a
//! scattered one costs at most a small window per read, not the maximum.

/// The first window (or the configured maximum, if smaller).
pub(crate) const MIN_WINDOW: u64 = 256 << 10;

/// How far ahead of the last read a read of the same file may start and
/// still be sequential: the kernel sends its readahead of one file as
/// several FUSE reads (up to 1 MiB each) that FUSE threads may answer out
/// of order.
pub(crate) const FILE_SLACK: u64 = 1 << 20;

/// The readahead state of one reader (an open file, or the blob of a layer).
#[derive(Debug, Default)]
pub(crate) struct Window {
    started: bool,
    /// End of the furthest read.
    last_end: u64,
    /// Current window size (0: nothing fetched ahead since the last jump).
    size: u64,
    /// How far ahead has been fetched.
    ahead_until: u64,
}

impl Window {
    /// A read of `off..end`. A read that starts at most `slack` after the
    /// furthest read and goes beyond it is sequential; one that ends behind
    /// it, by less than `max`, is a reordered piece or a look back (nothing
    /// changes); anything else is a jump, which starts over with the
    /// smallest window, fetched at once only if `fetch_on_jump`. Returns the
    /// range to fetch ahead, if any.
    pub(crate) fn advance(
        &mut self,
        off: u64,
        end: u64,
        max: u64,
        slack: u64,
        fetch_on_jump: bool,
    ) -> Option<(u64, u64)> {
        if max == 0 || end <= off {
            return None;
        }
        let min = MIN_WINDOW.min(max);
        if self.started && end <= self.last_end && self.last_end - off <= max {
            return None;
        }
        let sequential =
            self.started && off <= self.last_end.saturating_add(slack) && end > self.last_end;
        self.started = true;
        self.last_end = end;
        if !sequential {
            if !fetch_on_jump {
                self.size = 0;
                self.ahead_until = end;
                return None;
            }
            self.size = min;
            self.ahead_until = end.saturating_add(min);
            return Some((end, self.ahead_until));
        }
        // Refill when the reader is halfway into what was fetched ahead.
        if self.size > 0 && end.saturating_add(self.size / 2) < self.ahead_until {
            return None;
        }
        self.size = if self.size == 0 {
            min
        } else {
            self.size.saturating_mul(2).min(max)
        };
        let from = end.max(self.ahead_until);
        let to = end.saturating_add(self.size);
        self.ahead_until = to.max(self.ahead_until);
        (from < to).then_some((from, to))
    }

    /// A read that moves the reader to `end` without a decision (the blob
    /// walk while one file is being read: the file's window decides).
    pub(crate) fn note(&mut self, end: u64) {
        self.started = true;
        self.last_end = self.last_end.max(end);
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 8 << 20;

    #[test]
    fn sequential_reads_double_the_window_up_to_the_maximum() {
        let mut w = Window::default();
        let step = 128 << 10;
        let mut sizes = Vec::new();
        let mut fetched_to = 0;
        for k in 0..400u64 {
            if let Some((from, to)) = w.advance(k * step, (k + 1) * step, MAX, 0, true) {
                assert!(from >= fetched_to, "never fetches the same range twice");
                assert!(to > from);
                fetched_to = to;
                sizes.push(w.size());
            }
        }
        assert_eq!(sizes[0], MIN_WINDOW);
        assert!(sizes.windows(2).all(|s| s[1] == (s[0] * 2).min(MAX)));
        assert_eq!(*sizes.last().unwrap(), MAX);
        // Always ahead of the reader, never more than the maximum ahead.
        assert!(fetched_to > 400 * step && fetched_to <= 400 * step + MAX);
    }

    #[test]
    fn scattered_reads_stay_at_the_smallest_window() {
        let mut w = Window::default();
        for k in [50u64, 3, 900, 17, 400, 2, 77] {
            let off = k * (1 << 20);
            let (from, to) = w.advance(off, off + 4096, MAX, 0, true).unwrap();
            assert_eq!((from, to), (off + 4096, off + 4096 + MIN_WINDOW));
            assert_eq!(w.size(), MIN_WINDOW);
        }
        // The blob walk fetches nothing on a jump.
        let mut w = Window::default();
        assert_eq!(w.advance(1 << 30, (1 << 30) + 10, MAX, 0, false), None);
        assert_eq!(w.advance(5, 10, MAX, 0, false), None);
    }

    #[test]
    fn reordered_pieces_neither_reset_nor_grow() {
        let mut w = Window::default();
        w.advance(0, 1 << 20, MAX, FILE_SLACK, true);
        // The kernel's pieces 2..3 MiB, then 1..2 MiB.
        assert!(w.advance(2 << 20, 3 << 20, MAX, FILE_SLACK, true).is_some());
        let size = w.size();
        assert_eq!(w.advance(1 << 20, 2 << 20, MAX, FILE_SLACK, true), None);
        assert_eq!(w.size(), size);
        // Then sequential again from the furthest point.
        w.advance(3 << 20, 4 << 20, MAX, FILE_SLACK, true);
        assert!(w.size() >= size);
    }
}
