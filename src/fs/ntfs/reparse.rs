//! Special files: reparse points and Interix nodes.
//!
//! A `$REPARSE_POINT` starts with a tag. Windows symlinks (`IO_REPARSE_TAG_SYMLINK`) and
//! junctions (`IO_REPARSE_TAG_MOUNT_POINT`) become symlinks whose target is the print name
//! (or, if empty, the substitute name without its `\??\` prefix); a relative Windows
//! symlink has its backslashes turned into slashes so it resolves on Unix. Windows system
//! compression (`IO_REPARSE_TAG_WOF`) is recognised so reads can refuse it; every other tag
//! leaves the file as it is.
//!
//! ntfs-3g writes symlinks, by default, the Interix way: a file with the SYSTEM attribute
//! whose content is `IntxLNK\1` and the target in UTF-16; devices are `IntxCHR\0` or
//! `IntxBLK\0` and two 64-bit numbers. Those are recognised too (FIFOs and sockets, which
//! Interix marks only by size, are not: a zero-length Windows system file would be
//! mistaken for one).

use super::inode::{
    value, Inode, Special, AT_DATA, AT_REPARSE_POINT, FILE_ATTR_ENCRYPTED, FILE_ATTR_SYSTEM,
};
use super::{utf16_to_utf8, Ntfs};
use crate::fs::{FileType, Le};
use crate::{Error, Result};

pub const TAG_MOUNT_POINT: u32 = 0xA000_0003;
pub const TAG_SYMLINK: u32 = 0xA000_000C;
pub const TAG_WOF: u32 = 0x8000_0017;

/// Reparse data is at most 16 KiB.
const MAX_REPARSE: u64 = 64 << 10;
/// Longest Interix link read (4096 UTF-16 units plus the magic).
const MAX_INTERIX: u64 = 8 + 2 * 4096;

fn utf16_at(le: &Le, at: usize, len: usize) -> Result<Vec<u8>> {
    let units: Vec<u16> = le
        .bytes(at, len)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(utf16_to_utf8(&units))
}

/// The target of a symlink or junction reparse buffer (`v` is the whole attribute value).
pub fn link_target(tag: u32, v: &[u8], what: &str) -> Result<Vec<u8>> {
    let le = Le::new(v, what);
    let len = le.u16(4)? as usize;
    let body = Le::new(le.bytes(8, len)?, what);
    let (path, relative) = if tag == TAG_SYMLINK {
        (12usize, body.u32(8)? & 1 != 0)
    } else {
        (8usize, false)
    };
    let sub = utf16_at(&body, path + body.u16(0)? as usize, body.u16(2)? as usize)?;
    let print = utf16_at(&body, path + body.u16(4)? as usize, body.u16(6)? as usize)?;
    let mut t = if print.is_empty() {
        sub.strip_prefix(b"\\??\\")
            .map(<[u8]>::to_vec)
            .unwrap_or(sub)
    } else {
        print
    };
    if t.is_empty() {
        return Err(Error::Guest(format!("{what}: empty link target")));
    }
    if relative {
        for b in &mut t {
            if *b == b'\\' {
                *b = b'/';
            }
        }
    }
    Ok(t)
}

impl Ntfs {
    /// Decides whether `inode` is a symlink or device, from its reparse point or its
    /// Interix content.
    pub fn classify(&self, inode: &mut Inode) -> Result<()> {
        let cs = self.geo.cluster_size;
        let what = format!("NTFS: MFT record {}: $REPARSE_POINT", inode.ino);
        if let Some(rp) = inode.find(AT_REPARSE_POINT, b"") {
            let v = value(&*self.dev, cs, rp, MAX_REPARSE, &what)?;
            let tag = Le::new(&v, &what).u32(0)?;
            inode.reparse_tag = Some(tag);
            if tag == TAG_SYMLINK || tag == TAG_MOUNT_POINT {
                inode.special = Special::Link(link_target(tag, &v, &what)?);
            }
            return Ok(());
        }
        let std = &inode.std;
        if inode.dir || std.attrs & FILE_ATTR_SYSTEM == 0 || std.attrs & FILE_ATTR_ENCRYPTED != 0 {
            return Ok(());
        }
        let Some(d) = inode.find(AT_DATA, b"") else {
            return Ok(());
        };
        if d.size < 10 || d.size > MAX_INTERIX || d.compressed() || d.encrypted() {
            return Ok(());
        }
        let what = format!("NTFS: MFT record {}: Interix node", inode.ino);
        let v = value(&*self.dev, cs, d, MAX_INTERIX, &what)?;
        let le = Le::new(&v, &what);
        let magic = le.bytes(0, 8)?;
        if magic == b"IntxLNK\x01" {
            let t = utf16_at(&le, 8, v.len().saturating_sub(8) & !1)?;
            if !t.is_empty() {
                inode.special = Special::Link(t);
            }
        } else if v.len() == 24 && (magic == b"IntxCHR\0" || magic == b"IntxBLK\0") {
            let kind = if magic == b"IntxCHR\0" {
                FileType::CharDev
            } else {
                FileType::BlockDev
            };
            inode.special = Special::Dev(kind, le.u64(8)? as u32, le.u64(16)? as u32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }

    /// A symlink reparse buffer with the given names and flags.
    pub fn symlink_buffer(sub: &str, print: &str, flags: u32) -> Vec<u8> {
        let (s, p) = (utf16(sub), utf16(print));
        let mut body = Vec::new();
        body.extend((0u16).to_le_bytes());
        body.extend((s.len() as u16).to_le_bytes());
        body.extend((s.len() as u16).to_le_bytes());
        body.extend((p.len() as u16).to_le_bytes());
        body.extend(flags.to_le_bytes());
        body.extend(&s);
        body.extend(&p);
        let mut v = Vec::new();
        v.extend(TAG_SYMLINK.to_le_bytes());
        v.extend((body.len() as u16).to_le_bytes());
        v.extend([0, 0]);
        v.extend(body);
        v
    }

    #[test]
    fn targets() {
        let v = symlink_buffer("..\\a\\b", "..\\a\\b", 1);
        assert_eq!(link_target(TAG_SYMLINK, &v, "t").unwrap(), b"../a/b");
        let v = symlink_buffer("\\??\\C:\\x", "", 0);
        assert_eq!(link_target(TAG_SYMLINK, &v, "t").unwrap(), b"C:\\x");
        assert!(link_target(TAG_SYMLINK, &v[..20], "t").is_err());
    }
}
