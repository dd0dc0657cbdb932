//! Big-endian field readers for XFS structures (XFS stores everything big-endian except
//! the CRC fields, which this reader does not verify). Like [`crate::fs::Le`], a field
//! outside its buffer is an error, never a panic.

use crate::{Error, Result};

pub(super) struct Be<'a, 'w> {
    pub b: &'a [u8],
    pub what: &'w str,
}

impl<'a, 'w> Be<'a, 'w> {
    pub fn new(b: &'a [u8], what: &'w str) -> Be<'a, 'w> {
        Be { b, what }
    }

    pub fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8]> {
        at.checked_add(n)
            .and_then(|end| self.b.get(at..end))
            .ok_or_else(|| {
                Error::Guest(format!(
                    "{}: field at byte {at} (+{n}) lies outside its {}-byte structure",
                    self.what,
                    self.b.len()
                ))
            })
    }

    pub fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }

    pub fn u16(&self, at: usize) -> Result<u16> {
        let s = self.bytes(at, 2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    pub fn u32(&self, at: usize) -> Result<u32> {
        let s = self.bytes(at, 4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn u64(&self, at: usize) -> Result<u64> {
        let s = self.bytes(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
}

/// An [`Error::Guest`] with the "XFS: " prefix every message of this reader carries.
pub(super) fn guest(msg: impl std::fmt::Display) -> Error {
    Error::Guest(format!("XFS: {msg}"))
}

/// An [`Error::Unsupported`] naming the feature.
pub(super) fn unsupported(msg: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("XFS: {msg} is not supported"))
}
