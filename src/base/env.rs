//! Environment variables, parsed without allocating (the first allocation of a process may be
//! the one that reads them): `getenv`, then byte-wise parsing. A value that is not accepted is an
//! [`EnvError`] that names the variable, the value and what is accepted; the caller reports it
//! with [`diag::die_fmt`](crate::base::diag::die_fmt).

use core::ffi::CStr;
use core::fmt::{self, Write as _};

/// A bad environment variable: its name, value, and what is accepted.
pub(crate) struct EnvError {
    name: &'static str,
    value: &'static [u8],
    accepted: &'static [&'static str],
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.value[..self.value.len().min(200)];
        write!(f, "ftmalloc: {}=\"", self.name)?;
        for &b in v {
            if b.is_ascii_graphic() || b == b' ' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        write!(f, "\" is not accepted; accepted values: ")?;
        for (i, a) in self.accepted.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a)?;
        }
        f.write_str("\n")
    }
}

/// The value of `name`, if set. The bytes live as long as the environment is not modified;
/// callers parse them at once.
pub(crate) fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: name is NUL-terminated; getenv returns null or a NUL-terminated string that lives
    // as long as the environment is not modified (we copy nothing and read it at once).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: p is a valid C string from the environment.
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// The error for `name`'s `value`, which is not one of `accepted` (descriptions).
pub(crate) fn error(
    name: &'static CStr,
    value: &'static [u8],
    accepted: &'static [&'static str],
) -> EnvError {
    EnvError {
        name: name.to_str().unwrap_or("?"),
        value,
        accepted,
    }
}

/// `name` as one of `accepted` (its index); `None` when unset or empty.
pub(crate) fn choice(
    name: &'static CStr,
    accepted: &'static [&'static str],
) -> Result<Option<usize>, EnvError> {
    match getenv(name) {
        None | Some(b"") => Ok(None),
        Some(v) => accepted
            .iter()
            .position(|a| a.as_bytes() == v)
            .map(Some)
            .ok_or(error(name, v, accepted)),
    }
}

/// `name` as a 0/1 flag; unset or empty is `false`.
pub(crate) fn flag(name: &'static CStr) -> Result<bool, EnvError> {
    match getenv(name) {
        None | Some(b"") | Some(b"0") => Ok(false),
        Some(b"1") => Ok(true),
        Some(v) => Err(error(name, v, &["0", "1"])),
    }
}

/// `name` as a decimal integer of at most `max` (at most 18 digits); `None` when unset or empty.
/// `accepted` describes the range in the error message.
pub(crate) fn integer(
    name: &'static CStr,
    max: u64,
    accepted: &'static [&'static str],
) -> Result<Option<u64>, EnvError> {
    let v = match getenv(name) {
        None | Some(b"") => return Ok(None),
        Some(v) => v,
    };
    if v.len() <= 18 && v.iter().all(u8::is_ascii_digit) {
        let n = v.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        if n <= max {
            return Ok(Some(n));
        }
    }
    Err(error(name, v, accepted))
}
