//! Directories (version 2 format, with the v5 "dir3" headers on CRC filesystems).
//!
//! Short-form directories live in the inode (`LOCAL` data fork): a header (entry count,
//! count of 8-byte inode numbers, parent) and packed entries (name length, offset tag,
//! name, file type if the filesystem has `ftype`, 4- or 8-byte inode number).
//!
//! Every other form (block, leaf, node, and any of them with a btree-format fork) keeps
//! its names in *data blocks* in the first 32 GiB of the directory's logical space; the
//! leaf and free-index blocks above that only speed up lookups and are not needed to list
//! the directory. So one reader covers all of them: every directory block mapped below
//! `XFS_DIR2_LEAF_OFFSET` is read and parsed. A data block (`XD2D`/`XDD3`) holds entries
//! to its end; the single block of a block-form directory (`XD2B`/`XDB3`) ends with its
//! hash leaf and a tail giving the leaf's size. Entries are 8-byte aligned: inode
//! number, name length, name, file type, tag; unused space is marked by a 0xffff tag
//! with its length. Each step moves at least 8 bytes, so parsing a block ends.

use super::be::{guest, unsupported, Be};
use super::bmap::{self, Extent};
use super::inode::{Inode, FMT_BTREE, FMT_EXTENTS, FMT_LOCAL};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::Result;

const XD2B: u32 = 0x5844_3242; // "XD2B": v4 single-block directory
const XD2D: u32 = 0x5844_3244; // "XD2D": v4 data block
const XDB3: u32 = 0x5844_4233; // "XDB3": v5 single-block directory
const XDD3: u32 = 0x5844_4433; // "XDD3": v5 data block
const DIR2_DATA_FREE_TAG: u16 = 0xffff;
/// Data blocks live below this byte offset of the directory's logical space.
pub(super) const LEAF_OFFSET: u64 = 32 << 30;

/// Most names one directory may have here (a real one with millions of names is rare;
/// this keeps a hostile one from filling memory).
pub(super) const MAX_ENTRIES: usize = 1 << 22;

/// A name as the directory stores it, before the file type is settled.
pub(super) struct RawEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// `XFS_DIR3_FT_*` (0: unknown, look at the inode).
    pub ftype: u8,
}

fn check_name(dir: u64, name: &[u8]) -> Result<bool> {
    if name == b"." || name == b".." {
        return Ok(false);
    }
    if name.is_empty() || name.iter().any(|&c| c == b'/' || c == 0) {
        return Err(guest(format!(
            "directory {dir}: entry name {:?} is empty or holds '/' or NUL",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(true)
}

/// The entries of directory `inode`, in on-disk order, without "." and "..".
/// `extents` gives the data fork's extents for the non-inline forms.
pub(super) fn entries(
    dev: &dyn BlockRead,
    sb: &Superblock,
    inode: &Inode,
    extents: impl FnOnce() -> Result<std::sync::Arc<Vec<Extent>>>,
) -> Result<Vec<RawEntry>> {
    match inode.format {
        FMT_LOCAL => shortform(sb, inode),
        FMT_EXTENTS | FMT_BTREE => {
            let exts = extents()?;
            blocks(dev, sb, inode.ino, &exts)
        }
        f => Err(guest(format!(
            "directory {}: data fork format {f} is not a directory format",
            inode.ino
        ))),
    }
}

fn shortform(sb: &Superblock, inode: &Inode) -> Result<Vec<RawEntry>> {
    let ino = inode.ino;
    let b = inode.local_data()?;
    let what = format!("XFS: directory {ino}: short-form entries");
    let r = Be::new(b, &what);
    let count = r.u8(0)? as usize;
    let wide = r.u8(1)? != 0;
    let isize = if wide { 8 } else { 4 };
    let mut at = 2 + isize; // past the parent's number
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let namelen = r.u8(at)? as usize;
        let name = r.bytes(at + 3, namelen)?;
        let mut p = at + 3 + namelen;
        let ftype = if sb.features.ftype {
            p += 1;
            r.u8(p - 1)?
        } else {
            0
        };
        let num = if wide { r.u64(p)? } else { r.u32(p)? as u64 };
        at = p + isize;
        if check_name(ino, name)? {
            out.push(RawEntry {
                name: name.to_vec(),
                ino: num,
                ftype,
            });
        }
    }
    Ok(out)
}

fn blocks(
    dev: &dyn BlockRead,
    sb: &Superblock,
    ino: u64,
    exts: &[Extent],
) -> Result<Vec<RawEntry>> {
    let per = 1u64 << sb.dirblklog; // filesystem blocks per directory block
    let limit = LEAF_OFFSET >> sb.blocklog; // first file block of the leaf section
    let mut out = Vec::new();
    let mut last: Option<u64> = None;
    for e in exts {
        if e.off >= limit {
            break;
        }
        let first = e.off / per;
        let end = (e.end().min(limit)).div_ceil(per);
        for db in first..end {
            if last.is_some_and(|l| l >= db) {
                continue;
            }
            last = Some(db);
            let buf = bmap::read_blocks(dev, sb, ino, exts, db * per, per)?;
            data_block(sb, ino, db, &buf, &mut out)?;
        }
    }
    Ok(out)
}

/// Checks a directory data block's header; returns where its entries start and end, and
/// whether it is the single block of a block-form directory (which ends in its leaf).
pub(super) fn data_header(
    sb: &Superblock,
    ino: u64,
    db: u64,
    buf: &[u8],
) -> Result<(usize, usize, bool)> {
    let what = format!("XFS: directory {ino}: block {db}");
    let r = Be::new(buf, &what);
    let magic = r.u32(0)?;
    let (hdr, single) = match (sb.features.crc, magic) {
        (false, XD2B) => (16usize, true),
        (false, XD2D) => (16, false),
        (true, XDB3) => (64, true),
        (true, XDD3) => (64, false),
        _ => {
            return Err(guest(format!(
                "directory {ino}: block {db} has no directory data magic ({magic:#010x})"
            )))
        }
    };
    if sb.features.crc && r.u64(40)? != ino {
        return Err(guest(format!(
            "directory {ino}: block {db} belongs to inode {}",
            r.u64(40)?
        )));
    }
    let end = if single {
        // Tail: leaf entry count and stale count, after `count` 8-byte leaf entries.
        let count = r.u32(buf.len().saturating_sub(8))? as usize;
        buf.len()
            .checked_sub(8)
            .and_then(|t| t.checked_sub(count.checked_mul(8)?))
            .filter(|&e| e >= hdr)
            .ok_or_else(|| {
                guest(format!(
                    "directory {ino}: block {db}: {count} leaf entries do not fit the block"
                ))
            })?
    } else {
        buf.len()
    };
    Ok((hdr, end, single))
}

/// The entry at byte `at` of a data block whose entries end at `end`: its name, inode
/// number, file type and (8-byte aligned) size.
pub(super) fn entry_at<'a>(
    sb: &Superblock,
    ino: u64,
    db: u64,
    buf: &'a [u8],
    at: usize,
    end: usize,
) -> Result<(&'a [u8], u64, u8, usize)> {
    let what = format!("XFS: directory {ino}: block {db}");
    let r = Be::new(buf, &what);
    let num = r.u64(at)?;
    let namelen = r.u8(at + 8)? as usize;
    let name = r.bytes(at + 9, namelen)?;
    let ftype = if sb.features.ftype {
        r.u8(at + 9 + namelen)?
    } else {
        0
    };
    let size = (9 + namelen + sb.features.ftype as usize + 2).next_multiple_of(8);
    if namelen == 0 || at + size > end {
        return Err(guest(format!(
            "directory {ino}: block {db}: entry at {at} ({namelen}-byte name) runs past the entries"
        )));
    }
    Ok((name, num, ftype, size))
}

fn data_block(
    sb: &Superblock,
    ino: u64,
    db: u64,
    buf: &[u8],
    out: &mut Vec<RawEntry>,
) -> Result<()> {
    let (hdr, end, _) = data_header(sb, ino, db, buf)?;
    let what = format!("XFS: directory {ino}: block {db}");
    let r = Be::new(buf, &what);
    let mut at = hdr;
    while at < end {
        let tag = r.u16(at)?;
        if tag == DIR2_DATA_FREE_TAG {
            let len = r.u16(at + 2)? as usize;
            if len < 8 || len % 8 != 0 || at + len > end {
                return Err(guest(format!(
                    "directory {ino}: block {db}: free space of {len} bytes at {at}"
                )));
            }
            at += len;
            continue;
        }
        let (name, num, ftype, size) = entry_at(sb, ino, db, buf, at, end)?;
        at += size;
        if check_name(ino, name)? {
            if out.len() >= MAX_ENTRIES {
                return Err(unsupported(format!(
                    "directory {ino}: more than {MAX_ENTRIES} entries"
                )));
            }
            out.push(RawEntry {
                name: name.to_vec(),
                ino: num,
                ftype,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(crc: bool, ftype: bool) -> Superblock {
        let mut sb = Superblock::parse(&super::super::sb::tests::sample()).unwrap();
        sb.features.crc = crc;
        sb.features.ftype = ftype;
        sb
    }

    /// A v4 data block with free space, a stale-free layout and an entry that overruns.
    #[test]
    fn data_block_entries_and_damage() {
        let sb = sb(false, false);
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&XD2D.to_be_bytes());
        let mut at = 16;
        for (name, num) in [(&b"abc"[..], 200u64), (b"..", 128), (b"x", 300)] {
            b[at..at + 8].copy_from_slice(&num.to_be_bytes());
            b[at + 8] = name.len() as u8;
            b[at + 9..at + 9 + name.len()].copy_from_slice(name);
            at += (11 + name.len()).next_multiple_of(8);
        }
        // The rest is one free region.
        b[at..at + 2].copy_from_slice(&0xffffu16.to_be_bytes());
        b[at + 2..at + 4].copy_from_slice(&((4096 - at) as u16).to_be_bytes());
        let mut out = Vec::new();
        data_block(&sb, 5, 0, &b, &mut out).unwrap();
        let names: Vec<_> = out.iter().map(|e| (e.name.clone(), e.ino)).collect();
        assert_eq!(names, vec![(b"abc".to_vec(), 200), (b"x".to_vec(), 300)]);
        // A free region of length 0 would never advance.
        b[at + 2..at + 4].copy_from_slice(&0u16.to_be_bytes());
        assert!(data_block(&sb, 5, 0, &b, &mut Vec::new()).is_err());
        // A name with '/'.
        b[at + 2..at + 4].copy_from_slice(&((4096 - at) as u16).to_be_bytes());
        b[16 + 9] = b'/';
        assert!(data_block(&sb, 5, 0, &b, &mut Vec::new()).is_err());
        // A v5 block that names another owner.
        let sb5 = super::tests::sb(true, true);
        let mut c = vec![0u8; 4096];
        c[0..4].copy_from_slice(&XDD3.to_be_bytes());
        c[40..48].copy_from_slice(&6u64.to_be_bytes());
        assert!(data_block(&sb5, 5, 0, &c, &mut Vec::new()).is_err());
    }
}
