//! Diagnostics that allocate nothing: abort with a message ([`die`], [`die_fmt`]) and a stderr
//! writer backed by a stack buffer ([`StderrWriter`]).
//!
//! An allocator cannot format into a `String` or call `eprintln!` when it reports a bad pointer
//! or a bad environment variable: the allocation would re-enter it, perhaps while its state is
//! the thing being reported. Everything here writes with `write(2)` from the stack and ends with
//! `abort(3)`, never a panic (the allocator never unwinds).

use core::fmt::{self, Write};

/// Writes formatted text to stderr (or another file descriptor) through a stack buffer: no
/// allocation.
pub struct StderrWriter {
    buf: [u8; 1024],
    len: usize,
    fd: i32,
}

impl StderrWriter {
    /// An empty writer to stderr.
    pub fn new() -> StderrWriter {
        StderrWriter::to_fd(2)
    }

    /// An empty writer to the file descriptor `fd` (the caller keeps it open while writing).
    pub fn to_fd(fd: i32) -> StderrWriter {
        StderrWriter {
            buf: [0; 1024],
            len: 0,
            fd,
        }
    }

    /// Writes what is buffered to the file descriptor (stderr unless
    /// [`to_fd`](Self::to_fd) named another), retrying short writes.
    pub fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: buf[off..len] is initialised memory we own.
            let n =
                unsafe { libc::write(self.fd, self.buf[off..].as_ptr().cast(), self.len - off) };
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

extern "C" {
    /// glibc 2.32 and later: the English description of an error number, a static string (no
    /// translation, no allocation); null for an unknown number.
    fn strerrordesc_np(errnum: i32) -> *const core::ffi::c_char;
    /// glibc 2.32 and later: the error number's name (`ENOENT`), a static string; null for an
    /// unknown number.
    fn strerrorname_np(errnum: i32) -> *const core::ffi::c_char;
}

/// An error number as text, for messages written without allocating: `No such file or
/// directory (ENOENT)`, or `error 1234` for a number the C library does not know.
#[derive(Clone, Copy, Debug)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's `errno`.
    pub fn last() -> Errno {
        // SAFETY: __errno_location returns this thread's errno slot.
        Errno(unsafe { *libc::__errno_location() })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |p: *const core::ffi::c_char| {
            if p.is_null() {
                None
            } else {
                // SAFETY: a non-null result is a static NUL-terminated string (glibc's tables).
                unsafe { core::ffi::CStr::from_ptr(p) }.to_str().ok()
            }
        };
        // SAFETY: both functions accept any number and return static strings or null.
        let (desc, name) =
            unsafe { (text(strerrordesc_np(self.0)), text(strerrorname_np(self.0))) };
        match (desc, name) {
            (Some(d), Some(n)) => write!(f, "{d} ({n})"),
            _ => write!(f, "error {}", self.0),
        }
    }
}

/// A byte string (a path) shown as text: printable ASCII as is, other bytes as `\xNN`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// The size of a buffer for [`path_with_pid`] (Linux's `PATH_MAX`, the NUL included).
pub const PATH_MAX: usize = 4096;

/// Writes `raw` into `out` with each `%p` replaced by `pid` (decimal), NUL-terminated, and
/// returns its length (the NUL not counted); `None` when it does not fit. Allocates nothing.
pub fn path_with_pid(raw: &[u8], pid: u32, out: &mut [u8; PATH_MAX]) -> Option<usize> {
    let mut n = 0;
    let mut i = 0;
    let mut push = |n: &mut usize, b: u8| -> Option<()> {
        // Room for the byte and the NUL after it.
        if *n + 1 >= PATH_MAX {
            return None;
        }
        out[*n] = b;
        *n += 1;
        Some(())
    };
    while i < raw.len() {
        if raw[i] == b'%' && raw.get(i + 1) == Some(&b'p') {
            let mut digits = [0u8; 10];
            let mut d = 0;
            let mut v = pid;
            loop {
                digits[d] = b'0' + (v % 10) as u8;
                d += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            while d > 0 {
                d -= 1;
                push(&mut n, digits[d])?;
            }
            i += 2;
        } else {
            push(&mut n, raw[i])?;
            i += 1;
        }
    }
    out[n] = 0;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_with_pid_replaces_every_percent_p_and_refuses_an_overlong_path() {
        let mut out = [0u8; PATH_MAX];
        let n = path_with_pid(b"/tmp/a.%p.%p%", 407, &mut out).unwrap();
        assert_eq!(&out[..n + 1], b"/tmp/a.407.407%\0");
        let n = path_with_pid(b"x%p", 0, &mut out).unwrap();
        assert_eq!(&out[..n], b"x0");
        let long = [b'a'; PATH_MAX];
        assert!(path_with_pid(&long, 1, &mut out).is_none());
        // 4095 bytes and the NUL fit; a %p that grows past them does not.
        assert_eq!(
            path_with_pid(&long[..PATH_MAX - 1], 1, &mut out),
            Some(PATH_MAX - 1)
        );
        assert_eq!(out[PATH_MAX - 1], 0);
        let mut grows = [b'a'; PATH_MAX - 1];
        grows[PATH_MAX - 3..].copy_from_slice(b"%p");
        assert!(path_with_pid(&grows, 123, &mut out).is_none());
    }

    #[test]
    fn errno_names_the_error() {
        let mut w = [0u8; 128];
        struct Buf<'a>(&'a mut [u8], usize);
        impl Write for Buf<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0[self.1..self.1 + s.len()].copy_from_slice(s.as_bytes());
                self.1 += s.len();
                Ok(())
            }
        }
        let mut b = Buf(&mut w, 0);
        write!(b, "{}|{}", Errno(libc::ENOENT), Errno(99999)).unwrap();
        let n = b.1;
        assert_eq!(&w[..n], b"No such file or directory (ENOENT)|error 99999");
    }
}
