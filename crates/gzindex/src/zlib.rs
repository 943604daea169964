//! The one unsafe module: a raw zlib inflate stream through `libz-sys`, for
//! the two calls flate2 does not expose (`inflatePrime`,
//! `inflateSetDictionary`) and for `Z_BLOCK` stops with `data_type`, the
//! zran.c technique.
//!
//! Safety argument, once for the module: the `z_stream` lives in a `Box`
//! that never moves (zlib keeps a pointer back to it and checks it), is
//! initialised by `inflateInit2_` before any other call and ended exactly
//! once in `Drop`. `next_in`/`next_out` are set from live slices right
//! before each `inflate` and only for its duration; zlib never writes
//! through `next_in` (the `*mut` is zlib's old C signature).

use libz_sys as z;
use std::ffi::{c_int, c_uint, c_void};

/// What one `inflate` call did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub consumed: usize,
    pub produced: usize,
    /// zlib's return code (`Z_OK`, `Z_STREAM_END`, `Z_BUF_ERROR`, errors).
    pub rc: c_int,
    /// `z_stream.data_type` after the call (bit 7: stopped at the end of a
    /// block header; bit 6: that block is the last; bits 0-2: unused bits
    /// in the last byte consumed).
    pub data_type: c_int,
}

pub(crate) const Z_OK: c_int = z::Z_OK;
pub(crate) const Z_STREAM_END: c_int = z::Z_STREAM_END;
pub(crate) const Z_BUF_ERROR: c_int = z::Z_BUF_ERROR;
pub(crate) const Z_NO_FLUSH: c_int = z::Z_NO_FLUSH;
pub(crate) const Z_BLOCK: c_int = z::Z_BLOCK;

/// Window bits: gzip wrapper (header and CRC checked) or raw deflate.
pub(crate) const GZIP: c_int = 15 + 16;
pub(crate) const RAW: c_int = -15;

extern "C" fn zalloc(_: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    // SAFETY: calloc with any sizes is sound; zlib checks for NULL.
    unsafe { libc::calloc(items as usize, size as usize) }
}

extern "C" fn zfree(_: *mut c_void, p: *mut c_void) {
    // SAFETY: `p` came from `zalloc` (calloc) above.
    unsafe { libc::free(p) }
}

pub(crate) struct Inflate {
    strm: Box<z::z_stream>,
}

// The stream is owned and only used through `&mut self`.
unsafe impl Send for Inflate {}

impl Inflate {
    pub(crate) fn new(window_bits: c_int) -> Result<Inflate, c_int> {
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: see the module comment; the version and size tell zlib
        // which struct layout we were compiled against.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if rc != Z_OK {
            return Err(rc);
        }
        Ok(Inflate { strm })
    }

    /// Start at a bit position: the `bits` high bits of the byte before the
    /// input (`value` holds them in its low bits).
    pub(crate) fn prime(&mut self, bits: u8, value: u8) -> Result<(), c_int> {
        // SAFETY: initialised stream.
        let rc = unsafe { z::inflatePrime(&mut *self.strm, bits as c_int, value as c_int) };
        if rc == Z_OK {
            Ok(())
        } else {
            Err(rc)
        }
    }

    /// The 32 KiB (at most) of output before the start point.
    pub(crate) fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), c_int> {
        // SAFETY: initialised stream; zlib copies `dict` and does not keep it.
        let rc = unsafe {
            z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as c_uint)
        };
        if rc == Z_OK {
            Ok(())
        } else {
            Err(rc)
        }
    }

    /// Start the next gzip member (same window bits).
    pub(crate) fn reset(&mut self) -> Result<(), c_int> {
        // SAFETY: initialised stream.
        let rc = unsafe { z::inflateReset(&mut *self.strm) };
        if rc == Z_OK {
            Ok(())
        } else {
            Err(rc)
        }
    }

    pub(crate) fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        // zlib counts in c_uint: feed at most 1 GiB per call.
        let in_len = input.len().min(1 << 30);
        let out_len = output.len().min(1 << 30);
        self.strm.next_in = input.as_ptr() as *mut u8;
        self.strm.avail_in = in_len as c_uint;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as c_uint;
        // SAFETY: the pointers cover live slices of the given lengths for
        // the duration of the call.
        let rc = unsafe { z::inflate(&mut *self.strm, flush) };
        let step = Step {
            consumed: in_len - self.strm.avail_in as usize,
            produced: out_len - self.strm.avail_out as usize,
            rc,
            data_type: self.strm.data_type,
        };
        // Nothing may point at the caller's buffers after this call.
        self.strm.next_in = std::ptr::null_mut();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        step
    }
}

impl Drop for Inflate {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended once here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}
