//! Diagnostics that allocate nothing: abort with a message ([`die`], [`die_fmt`]) and a stderr
//! writer backed by a stack buffer ([`StderrWriter`]).
//!
//! An allocator cannot format into a `String` or call `eprintln!` when it reports a bad pointer
//! or a bad environment variable: the allocation would re-enter it, perhaps while its state is
//! the thing being reported. Everything here writes with `write(2)` from the stack and ends with
//! `abort(3)`, never a panic (the allocator never unwinds).

use core::fmt::{self, Write as _};

/// Writes formatted text to stderr through a stack buffer: no allocation.
pub struct StderrWriter {
    buf: [u8; 1024],
    len: usize,
}

impl StderrWriter {
    /// An empty writer.
    pub fn new() -> StderrWriter {
        StderrWriter {
            buf: [0; 1024],
            len: 0,
        }
    }

    /// Writes what is buffered to stderr (file descriptor 2), retrying short writes.
    pub fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: buf[off..len] is initialised memory we own.
            let n = unsafe { libc::write(2, self.buf[off..].as_ptr().cast(), self.len - off) };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        self.len = 0;
    }
}

impl Default for StderrWriter {
    fn default() -> Self {
        StderrWriter::new()
    }
}

impl fmt::Write for StderrWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Writes `msg` to stderr and aborts. Allocates nothing.
#[cold]
pub fn die(msg: &[u8]) -> ! {
    // SAFETY: msg is a valid buffer; write and abort have no other preconditions.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}

/// Formats `msg` to stderr and aborts. Allocates nothing.
#[cold]
pub fn die_fmt(msg: impl fmt::Display) -> ! {
    let mut w = StderrWriter::new();
    let _ = write!(w, "{msg}");
    w.flush();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}
