//! The fuzz input as a stream of bytes, shared by the targets (each includes this file with
//! `#[path]` and adds its own argument decoders in an `impl Input` block).

/// The bytes of the input, read front to back; zeros once exhausted.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// True when every byte has been read.
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}
