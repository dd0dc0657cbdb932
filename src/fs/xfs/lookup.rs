//! Name lookup through a directory's hash index instead of a scan of all its names.
//!
//! Names are indexed by `xfs_da_hashname`, a rotate-and-xor hash, in leaf entries
//! (hash, address of the entry in 8-byte units of the directory's logical space) sorted
//! by hash. A block-form directory keeps its leaf at the end of its only block; a leaf
//! directory has one leaf block (`LEAF1`) at `XFS_DIR2_LEAF_OFFSET`; a node directory has
//! a dabtree there whose nodes (`XFS_DA_NODE`) hold (largest hash below, child block)
//! pairs above `LEAFN` leaves chained left to right. Equal hashes may run across leaves,
//! so the search follows the chain while the hash matches (a bounded number of hops).
//! Short-form and case-insensitive directories are scanned by the caller, which also
//! falls back to a scan when the index is damaged.

use super::be::{guest, Be};
use super::bmap::{self, Extent};
use super::dir::{self, RawEntry, LEAF_OFFSET};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::Result;

const LEAF1_V4: u16 = 0xd2f1;
const LEAF1_V5: u16 = 0x3df1;
const LEAFN_V4: u16 = 0xd2ff;
const LEAFN_V5: u16 = 0x3dff;
const NODE_V4: u16 = 0xfebe;
const NODE_V5: u16 = 0x3ebe;
/// `XFS_DA_NODE_MAXDEPTH`.
const MAX_DEPTH: usize = 5;
/// Leaves followed for one run of equal hashes.
const MAX_HOPS: usize = 64;

/// `xfs_da_hashname`.
pub(super) fn hashname(name: &[u8]) -> u32 {
    let mut h = 0u32;
    let mut chunks = name.chunks_exact(4);
    for c in &mut chunks {
        h = (c[0] as u32) << 21
            ^ (c[1] as u32) << 14
            ^ (c[2] as u32) << 7
            ^ c[3] as u32
            ^ h.rotate_left(28);
    }
    match *chunks.remainder() {
        [a, b, c] => (a as u32) << 14 ^ (b as u32) << 7 ^ c as u32 ^ h.rotate_left(21),
        [a, b] => (a as u32) << 7 ^ b as u32 ^ h.rotate_left(14),
        [a] => a as u32 ^ h.rotate_left(7),
        _ => h,
    }
}

struct Dir<'a> {
    dev: &'a dyn BlockRead,
    sb: &'a Superblock,
    ino: u64,
    exts: &'a [Extent],
}

impl Dir<'_> {
    /// Directory block starting at file block `fb`.
    fn block(&self, fb: u64) -> Result<Vec<u8>> {
        bmap::read_blocks(
            self.dev,
            self.sb,
            self.ino,
            self.exts,
            fb,
            1 << self.sb.dirblklog,
        )
    }

    /// The entry the leaf address `addr` points at, if it is called `name`.
    fn entry(
        &self,
        addr: u32,
        name: &[u8],
        cache: &mut Option<(u64, Vec<u8>)>,
    ) -> Result<Option<RawEntry>> {
        let byte = addr as u64 * 8;
        let shift = self.sb.blocklog as u32 + self.sb.dirblklog as u32;
        let db = byte >> shift;
        let at = (byte & ((1 << shift) - 1)) as usize;
        if byte >= LEAF_OFFSET {
            return Err(guest(format!(
                "directory {}: leaf address {addr} outside the data",
                self.ino
            )));
        }
        if cache.as_ref().is_none_or(|(d, _)| *d != db) {
            *cache = Some((db, self.block(db << self.sb.dirblklog)?));
        }
        let Some((_, buf)) = cache.as_ref() else {
            return Ok(None);
        };
        let (hdr, end, _) = dir::data_header(self.sb, self.ino, db, buf)?;
        if at < hdr || at >= end {
            return Err(guest(format!(
                "directory {}: leaf address {addr} outside the entries of block {db}",
                self.ino
            )));
        }
        let (n, num, ftype, _) = dir::entry_at(self.sb, self.ino, db, buf, at, end)?;
        Ok((n == name).then(|| RawEntry {
            name: n.to_vec(),
            ino: num,
            ftype,
        }))
    }

    /// Scans leaf entries `(hash, addr)` at `at..at + count * 8` of `b` for `name`.
    /// Returns the entry, or whether the run of equal hashes reached the end.
    fn scan_leaf(
        &self,
        b: &Be,
        at: usize,
        count: usize,
        hash: u32,
        name: &[u8],
        cache: &mut Option<(u64, Vec<u8>)>,
    ) -> Result<(Option<RawEntry>, bool)> {
        // First entry with a hash >= `hash` (entries are sorted by hash).
        let (mut lo, mut hi) = (0usize, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if b.u32(at + mid * 8)? < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        for i in lo..count {
            if b.u32(at + i * 8)? != hash {
                return Ok((None, false));
            }
            let addr = b.u32(at + i * 8 + 4)?;
            if addr == 0 {
                continue; // stale
            }
            if let Some(e) = self.entry(addr, name, cache)? {
                return Ok((Some(e), false));
            }
        }
        Ok((None, true))
    }
}

/// Looks `name` up in a directory whose data fork has extents `exts`. `Ok(None)`: no such
/// name.
pub(super) fn find(
    dev: &dyn BlockRead,
    sb: &Superblock,
    ino: u64,
    exts: &[Extent],
    name: &[u8],
) -> Result<Option<RawEntry>> {
    let d = Dir { dev, sb, ino, exts };
    let hash = hashname(name);
    let mut cache = None;
    let leaf_fb = LEAF_OFFSET >> sb.blocklog;
    if exts.iter().all(|e| e.off < leaf_fb) {
        // Block form: the leaf sits between the entries and the tail.
        let buf = d.block(0)?;
        let (_, end, single) = dir::data_header(sb, ino, 0, &buf)?;
        if !single {
            return Err(guest(format!(
                "directory {ino}: data blocks without a leaf"
            )));
        }
        let count = (buf.len() - 8 - end) / 8;
        let what = format!("XFS: directory {ino}: block leaf");
        let r = Be::new(&buf, &what);
        let (found, _) = d.scan_leaf(&r, end, count, hash, name, &mut cache)?;
        return Ok(found);
    }
    let (hdr, v5) = if sb.features.crc {
        (64usize, true)
    } else {
        (16, false)
    };
    let mut fb = leaf_fb;
    let mut level: Option<u16> = None;
    for _ in 0..MAX_DEPTH {
        let buf = d.block(fb)?;
        let what = format!("XFS: directory {ino}: index block {fb}");
        let r = Be::new(&buf, &what);
        let magic = r.u16(8)?;
        let count = r.u16(hdr - if v5 { 8 } else { 4 })? as usize;
        if hdr + count * 8 > buf.len() {
            return Err(guest(format!(
                "directory {ino}: index block {fb} with {count} entries"
            )));
        }
        match (v5, magic) {
            (false, LEAF1_V4) | (true, LEAF1_V5) | (false, LEAFN_V4) | (true, LEAFN_V5) => {
                if level.is_some_and(|l| l != 1) {
                    return Err(guest(format!(
                        "directory {ino}: leaf {fb} below a level-{level:?} node"
                    )));
                }
                return leaf_chain(&d, buf, fb, hdr, hash, name, &mut cache);
            }
            (false, NODE_V4) | (true, NODE_V5) => {
                let lvl = r.u16(hdr - if v5 { 6 } else { 2 })?;
                if lvl == 0 || level.is_some_and(|l| l != lvl + 1) {
                    return Err(guest(format!(
                        "directory {ino}: index node {fb} at level {lvl}"
                    )));
                }
                level = Some(lvl);
                let mut child = None;
                for i in 0..count {
                    if r.u32(hdr + i * 8)? >= hash {
                        child = Some(r.u32(hdr + i * 8 + 4)? as u64);
                        break;
                    }
                }
                let Some(c) = child else { return Ok(None) };
                if c < leaf_fb {
                    return Err(guest(format!(
                        "directory {ino}: index node {fb} points at data block {c}"
                    )));
                }
                fb = c;
            }
            _ => {
                return Err(guest(format!(
                    "directory {ino}: index block {fb} with magic {magic:#06x}"
                )))
            }
        }
    }
    Err(guest(format!(
        "directory {ino}: index deeper than {MAX_DEPTH} levels"
    )))
}

/// Searches leaf `buf` (file block `fb`) and, while equal hashes run on, the leaves after
/// it.
fn leaf_chain(
    d: &Dir,
    mut buf: Vec<u8>,
    mut fb: u64,
    hdr: usize,
    hash: u32,
    name: &[u8],
    cache: &mut Option<(u64, Vec<u8>)>,
) -> Result<Option<RawEntry>> {
    let count_at = hdr - if d.sb.features.crc { 8 } else { 4 };
    for _ in 0..MAX_HOPS {
        let what = format!("XFS: directory {}: leaf block {fb}", d.ino);
        let r = Be::new(&buf, &what);
        let count = r.u16(count_at)? as usize;
        if hdr + count * 8 > buf.len() {
            return Err(guest(format!(
                "directory {}: leaf {fb} with {count} entries",
                d.ino
            )));
        }
        let (found, run_on) = d.scan_leaf(&r, hdr, count, hash, name, cache)?;
        let forw = r.u32(0)? as u64;
        if found.is_some() || !run_on || forw == 0 {
            return Ok(found);
        }
        if forw < LEAF_OFFSET >> d.sb.blocklog {
            return Err(guest(format!(
                "directory {}: leaf {fb} chains to data block {forw}",
                d.ino
            )));
        }
        fb = forw;
        buf = d.block(fb)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_matches_xfs() {
        // Values from xfs_db's "hash" command.
        for (name, want) in [
            ("e0", 0x32b0u32),
            ("small.txt", 0xb606_bb12),
            ("a", 0x61),
            ("abcdefgh", 0x4c7a_38f6),
            ("", 0),
        ] {
            assert_eq!(super::hashname(name.as_bytes()), want, "{name}");
        }
    }
}
