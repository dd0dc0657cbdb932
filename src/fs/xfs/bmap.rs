//! Block maps: the data fork as a list of extents, from the packed records kept in the
//! inode (`EXTENTS` format) or in the leaves of a bmap btree (`BTREE` format, root in the
//! inode, interior and leaf blocks with `BMAP`/`BMA3` headers).
//!
//! An extent record is 128 bits, big-endian: 1 bit "unwritten" (preallocated, reads as
//! zeros), 54 bits file offset (in blocks), 52 bits filesystem block number, 21 bits
//! length. The btree is walked in key order, so its leaves give the extents in file
//! order; every pointer must lead one level down (no cycles possible), the depth is
//! capped, a block is visited once (no exponential sharing), and the extents must come
//! out sorted and disjoint.

use super::be::{guest, unsupported, Be};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::Result;
use std::collections::HashSet;

const BMAP_MAGIC: u32 = 0x424d_4150; // "BMAP" (v4)
const BMA3_MAGIC: u32 = 0x424d_4133; // "BMA3" (v5)

/// Deepest bmap btree this reader follows (XFS itself stays below 10 levels).
const MAX_LEVELS: u16 = 10;
/// Most extents one file may have here: 2 Mi extents is at least 8 GiB of 4 KiB blocks
/// with every block apart, 64 MiB of memory, and up to 128 MiB of [`Mapping`]s with the
/// holes between them.
///
/// [`Mapping`]: crate::fs::Mapping
pub(super) const MAX_EXTENTS: usize = 1 << 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    /// File offset, in blocks.
    pub off: u64,
    /// Filesystem block number (`agno << agblklog | agbno`).
    pub start: u64,
    pub len: u64,
    /// Allocated but never written: reads as zeros.
    pub unwritten: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// Decodes one packed 16-byte record.
pub(super) fn decode(rec: &[u8]) -> Result<Extent> {
    let r = Be::new(rec, "XFS: extent record");
    let l0 = r.u64(0)?;
    let l1 = r.u64(8)?;
    Ok(Extent {
        unwritten: l0 >> 63 != 0,
        off: (l0 & (u64::MAX >> 1)) >> 9,
        start: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        len: l1 & ((1 << 21) - 1),
    })
}

/// Appends the records of `b` (a whole number of 16-byte records) to `out`.
fn push_records(ino: u64, b: &[u8], n: usize, out: &mut Vec<Extent>) -> Result<()> {
    if out.len().saturating_add(n) > MAX_EXTENTS {
        return Err(unsupported(format!(
            "inode {ino}: more than {MAX_EXTENTS} extents"
        )));
    }
    for i in 0..n {
        let rec = b.get(i * 16..i * 16 + 16).ok_or_else(|| {
            guest(format!(
                "inode {ino}: extent record {i} lies past its block"
            ))
        })?;
        out.push(decode(rec)?);
    }
    Ok(())
}

/// Checks that extents are non-empty, sorted, disjoint, and that each lies inside one AG
/// of the data device.
fn check(sb: &Superblock, ino: u64, exts: &[Extent]) -> Result<()> {
    let mut prev_end = 0u64;
    for e in exts {
        if e.len == 0 {
            return Err(guest(format!(
                "inode {ino}: empty extent at block {}",
                e.off
            )));
        }
        if e.off < prev_end {
            return Err(guest(format!(
                "inode {ino}: extents overlap or are out of order at file block {}",
                e.off
            )));
        }
        prev_end = e.end();
        sb.extent_offset(e.start, e.len).map_err(|err| {
            guest(format!(
                "inode {ino}: extent at file block {}: {err}",
                e.off
            ))
        })?;
    }
    Ok(())
}

/// The extents of an `EXTENTS`-format fork: `nextents` records at its start.
pub(super) fn from_fork(
    sb: &Superblock,
    ino: u64,
    fork: &[u8],
    nextents: u64,
) -> Result<Vec<Extent>> {
    let fit = fork.len() / 16;
    let n = usize::try_from(nextents)
        .ok()
        .filter(|&n| n <= fit)
        .ok_or_else(|| {
            guest(format!(
                "inode {ino}: {nextents} extents do not fit the {}-byte data fork",
                fork.len()
            ))
        })?;
    let mut out = Vec::with_capacity(n);
    push_records(ino, fork, n, &mut out)?;
    check(sb, ino, &out)?;
    Ok(out)
}

/// The extents of a `BTREE`-format fork: the root (`level`, `numrecs`, keys, then
/// pointers placed after the room for as many keys as the fork could hold).
pub(super) fn from_btree(
    dev: &dyn BlockRead,
    sb: &Superblock,
    ino: u64,
    fork: &[u8],
) -> Result<Vec<Extent>> {
    Ok(walk(dev, sb, ino, fork)?.0)
}

/// The extents of a btree-format fork and the btree blocks they came from.
pub(super) fn walk(
    dev: &dyn BlockRead,
    sb: &Superblock,
    ino: u64,
    fork: &[u8],
) -> Result<(Vec<Extent>, Vec<u64>)> {
    let what = format!("XFS: inode {ino}: bmap btree root");
    let r = Be::new(fork, &what);
    let level = r.u16(0)?;
    let numrecs = r.u16(2)? as usize;
    let maxrecs = fork.len().saturating_sub(4) / 16;
    if level == 0 || level >= MAX_LEVELS {
        return Err(guest(format!(
            "inode {ino}: bmap btree root at level {level}"
        )));
    }
    if numrecs == 0 || numrecs > maxrecs {
        return Err(guest(format!(
            "inode {ino}: bmap btree root with {numrecs} pointers (room for {maxrecs})"
        )));
    }
    let mut ptrs = Vec::with_capacity(numrecs);
    for i in 0..numrecs {
        ptrs.push(r.u64(4 + maxrecs * 8 + i * 8)?);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    // Depth-first, in key order: a stack of (block, its level), children pushed reversed.
    let mut stack: Vec<(u64, u16)> = ptrs.into_iter().rev().map(|p| (p, level - 1)).collect();
    let bs = sb.blocksize as usize;
    let (hdr, magic) = if sb.features.crc {
        (72usize, BMA3_MAGIC)
    } else {
        (24usize, BMAP_MAGIC)
    };
    let per_block = (bs - hdr) / 16;
    let mut buf = vec![0u8; bs];
    while let Some((fsb, want_level)) = stack.pop() {
        if !seen.insert(fsb) {
            return Err(guest(format!(
                "inode {ino}: bmap btree block {fsb} is reached twice"
            )));
        }
        order.push(fsb);
        let at = sb
            .extent_offset(fsb, 1)
            .map_err(|e| guest(format!("inode {ino}: bmap btree pointer: {e}")))?;
        dev.read_at(at, &mut buf)?;
        let what = format!("XFS: inode {ino}: bmap btree block {fsb}");
        let b = Be::new(&buf, &what);
        if b.u32(0)? != magic {
            return Err(guest(format!(
                "inode {ino}: bmap btree block {fsb} has no {} magic",
                if sb.features.crc { "BMA3" } else { "BMAP" }
            )));
        }
        let lvl = b.u16(4)?;
        let n = b.u16(6)? as usize;
        if lvl != want_level {
            return Err(guest(format!(
                "inode {ino}: bmap btree block {fsb} is at level {lvl}, expected {want_level}"
            )));
        }
        if sb.features.crc && b.u64(56)? != ino {
            return Err(guest(format!(
                "inode {ino}: bmap btree block {fsb} belongs to inode {}",
                b.u64(56)?
            )));
        }
        if n == 0 || n > per_block {
            return Err(guest(format!(
                "inode {ino}: bmap btree block {fsb} with {n} records (room for {per_block})"
            )));
        }
        if lvl == 0 {
            push_records(ino, b.bytes(hdr, n * 16)?, n, &mut out)?;
        } else {
            let base = hdr + per_block * 8;
            for i in (0..n).rev() {
                stack.push((b.u64(base + i * 8)?, lvl - 1));
            }
        }
        if seen.len() > MAX_EXTENTS {
            return Err(unsupported(format!(
                "inode {ino}: a bmap btree of more than {MAX_EXTENTS} blocks"
            )));
        }
    }
    check(sb, ino, &out)?;
    Ok((out, order))
}

/// The index of the extent holding file block `fblock`, or of the first one after it.
pub(super) fn find(exts: &[Extent], fblock: u64) -> usize {
    exts.partition_point(|e| e.end() <= fblock)
}

/// Reads file blocks `first..first + count` of a metadata fork (directory blocks,
/// remote symlink blocks), which must all be mapped: a hole is damage.
pub(super) fn read_blocks(
    dev: &dyn BlockRead,
    sb: &Superblock,
    ino: u64,
    exts: &[Extent],
    first: u64,
    count: u64,
) -> Result<Vec<u8>> {
    let bs = sb.blocksize as u64;
    let total = count.saturating_mul(bs);
    if total > 1 << 20 {
        return Err(guest(format!(
            "inode {ino}: metadata block of {total} bytes"
        )));
    }
    let mut out = vec![0u8; total as usize];
    let mut fb = first;
    let end = first.saturating_add(count);
    let mut i = find(exts, fb);
    while fb < end {
        let e = exts
            .get(i)
            .filter(|e| e.off <= fb)
            .ok_or_else(|| guest(format!("inode {ino}: file block {fb} is not mapped")))?;
        let n = e.end().min(end) - fb;
        let at = sb.extent_offset(e.start, e.len)? + (fb - e.off) * bs;
        let o = ((fb - first) * bs) as usize;
        dev.read_at(at, &mut out[o..o + (n * bs) as usize])?;
        fb += n;
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs an extent record the way XFS does.
    pub fn encode(e: &Extent) -> [u8; 16] {
        let l0 = ((e.unwritten as u64) << 63) | (e.off << 9) | (e.start >> 43);
        let l1 = (e.start << 21) | e.len;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&l0.to_be_bytes());
        out[8..].copy_from_slice(&l1.to_be_bytes());
        out
    }

    #[test]
    fn record_round_trip() {
        for e in [
            Extent {
                off: 0,
                start: 1,
                len: 1,
                unwritten: false,
            },
            Extent {
                off: (1 << 54) - 1,
                start: (1 << 52) - 1,
                len: (1 << 21) - 1,
                unwritten: true,
            },
            Extent {
                off: 12345,
                start: 0x1_2345_6789,
                len: 77,
                unwritten: false,
            },
        ] {
            assert_eq!(decode(&encode(&e)).unwrap(), e);
        }
    }

    fn small_sb() -> Superblock {
        Superblock::parse(&super::super::sb::tests::sample()).unwrap()
    }

    /// A bmap btree built by hand: root (level 2) → one node → two leaves, in a memory
    /// image laid out with the sample geometry (4 KiB blocks, 4096 blocks per AG).
    #[test]
    fn btree_walk_and_damage() {
        let sb = small_sb();
        let bs = 4096usize;
        let ino = 131u64;
        let mut img = vec![0u8; 200 * bs];
        let hdr = 72;
        let block = |img: &mut Vec<u8>, at: usize, level: u16, n: u16| {
            let b = &mut img[at * bs..(at + 1) * bs];
            b[0..4].copy_from_slice(&BMA3_MAGIC.to_be_bytes());
            b[4..6].copy_from_slice(&level.to_be_bytes());
            b[6..8].copy_from_slice(&n.to_be_bytes());
            b[56..64].copy_from_slice(&ino.to_be_bytes());
        };
        let per = (bs - hdr) / 16;
        // Node at block 50 pointing at leaves 60 and 61.
        block(&mut img, 50, 1, 2);
        for (i, p) in [60u64, 61].iter().enumerate() {
            let at = 50 * bs + hdr + per * 8 + i * 8;
            img[at..at + 8].copy_from_slice(&p.to_be_bytes());
        }
        let mut want = Vec::new();
        for (leaf, first) in [(60usize, 0u64), (61, 100)] {
            block(&mut img, leaf, 0, 3);
            for j in 0..3u64 {
                let e = Extent {
                    off: first + j * 10,
                    start: 100 + first + j * 10,
                    len: 5,
                    unwritten: j == 1,
                };
                let at = leaf * bs + hdr + j as usize * 16;
                img[at..at + 16].copy_from_slice(&encode(&e));
                want.push(e);
            }
        }
        // Root in a 336-byte fork: level 2, one pointer to the node.
        let mut fork = vec![0u8; 336];
        fork[0..2].copy_from_slice(&2u16.to_be_bytes());
        fork[2..4].copy_from_slice(&1u16.to_be_bytes());
        let maxrecs = (336 - 4) / 16;
        fork[4 + maxrecs * 8..4 + maxrecs * 8 + 8].copy_from_slice(&50u64.to_be_bytes());
        let dev = crate::blockdev::MemDisk(img.clone());
        assert_eq!(from_btree(&dev, &sb, ino, &fork).unwrap(), want);

        // A leaf pointing back at the node: wrong level.
        let mut bad = img.clone();
        bad[61 * bs + 4..61 * bs + 6].copy_from_slice(&1u16.to_be_bytes());
        let e = from_btree(&crate::blockdev::MemDisk(bad), &sb, ino, &fork).unwrap_err();
        assert!(e.to_string().contains("level"), "{e}");
        // Both node pointers at the same leaf: reached twice.
        let mut bad = img.clone();
        let at = 50 * bs + hdr + per * 8 + 8;
        bad[at..at + 8].copy_from_slice(&60u64.to_be_bytes());
        let e = from_btree(&crate::blockdev::MemDisk(bad), &sb, ino, &fork).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // Another inode's block.
        let mut bad = img.clone();
        bad[60 * bs + 63] ^= 1;
        assert!(from_btree(&crate::blockdev::MemDisk(bad), &sb, ino, &fork).is_err());
        // Leaves out of order.
        let mut bad = img;
        let at = 50 * bs + hdr + per * 8;
        bad[at..at + 8].copy_from_slice(&61u64.to_be_bytes());
        bad[at + 8..at + 16].copy_from_slice(&60u64.to_be_bytes());
        let e = from_btree(&crate::blockdev::MemDisk(bad), &sb, ino, &fork).unwrap_err();
        assert!(e.to_string().contains("order"), "{e}");
    }
}
