//! Extent trees (the extents feature, inode flag EXTENTS_FL): `i_block` holds the root
//! node, a 12-byte header (magic 0xF30A, entries, max, depth) and up to 4 entries. At depth
//! 0 the entries are extents (logical block, length, physical block; a length above 32768
//! marks an unwritten extent of length − 32768, which reads as zeros); above, they are
//! index entries (first logical block, child node block), each child covering the logical
//! blocks up to the next entry's key.
//!
//! Checks, since the tree comes from the guest: depth at most 5 and one less at each
//! level, entry counts inside the node, keys strictly increasing, extents in order, not
//! overlapping and inside the range their parent index gives them, physical blocks inside
//! the volume, and a cap on the nodes one walk reads (an index whose entries all point at
//! the same child would otherwise multiply the work at each level).

use super::data::{Run, Runs};
use super::Ext4;
use crate::fs::{read_vec, Le};
use crate::{Error, Result};
use std::ops::Range;

pub const MAX_DEPTH: u16 = 5;
const MAGIC: u16 = 0xF30A;
/// Longest initialised extent; longer lengths mean "unwritten, length − 32768".
const INIT_MAX: u64 = 32768;
/// Tree nodes one walk may read.
const MAX_NODES: usize = 1 << 20;

/// Adds the runs of the tree rooted in `root` (an inode's `i_block`) that overlap the
/// logical blocks `want`, clipped to it.
pub fn collect(fs: &Ext4, ino: u64, root: &[u8], want: Range<u64>, out: &mut Runs) -> Result<()> {
    let mut w = Walker {
        fs,
        ino,
        nodes: 0,
        prev_end: 0,
    };
    w.node(root, None, 0..1 << 32, &want, out)
}

struct Walker<'a> {
    fs: &'a Ext4,
    ino: u64,
    nodes: usize,
    /// End of the last extent seen, to check order.
    prev_end: u64,
}

impl Walker<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Guest(format!("ext4: inode {}: extent tree: {msg}", self.ino))
    }

    fn node(
        &mut self,
        buf: &[u8],
        expect_depth: Option<u16>,
        bounds: Range<u64>,
        want: &Range<u64>,
        out: &mut Runs,
    ) -> Result<()> {
        let what = format!("ext4: inode {}: extent node", self.ino);
        let le = Le::new(buf, &what);
        if le.u16(0)? != MAGIC {
            return Err(self.err("node without the extent magic 0xF30A".into()));
        }
        let entries = usize::from(le.u16(2)?);
        let depth = le.u16(6)?;
        if 12 + entries * 12 > buf.len() {
            return Err(self.err(format!(
                "{entries} entries do not fit a {}-byte node",
                buf.len()
            )));
        }
        match expect_depth {
            None if depth > MAX_DEPTH => {
                return Err(self.err(format!("deeper than {MAX_DEPTH} levels ({depth})")))
            }
            Some(d) if d != depth => {
                return Err(self.err(format!("node at depth {depth} where {d} was expected")))
            }
            _ => {}
        }
        if depth == 0 {
            return self.leaf(&le, entries, bounds, want, out);
        }
        for i in 0..entries {
            let at = 12 + i * 12;
            let key = u64::from(le.u32(at)?);
            let child = u64::from(le.u32(at + 4)?) | (u64::from(le.u16(at + 8)?) << 32);
            let end = if i + 1 < entries {
                u64::from(le.u32(at + 12)?)
            } else {
                bounds.end
            };
            let start = if i == 0 { bounds.start } else { key };
            if start >= end || (i > 0 && key < bounds.start) || end > bounds.end {
                return Err(self.err(format!(
                    "index keys out of order at entry {i} (key {key}, next {end})"
                )));
            }
            if end <= want.start {
                continue;
            }
            if start >= want.end {
                break;
            }
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                return Err(self.err(format!("more than {MAX_NODES} nodes")));
            }
            let sb = &self.fs.sb;
            if child >= sb.blocks_count {
                return Err(self.err(format!(
                    "child node block {child} lies past the end of the filesystem"
                )));
            }
            let block = read_vec(
                self.fs.dev.as_ref(),
                child * sb.block_size,
                sb.block_size,
                1 << 16,
                &what,
            )?;
            self.node(&block, Some(depth - 1), start..end, want, out)?;
        }
        Ok(())
    }

    fn leaf(
        &mut self,
        le: &Le,
        entries: usize,
        bounds: Range<u64>,
        want: &Range<u64>,
        out: &mut Runs,
    ) -> Result<()> {
        for i in 0..entries {
            let at = 12 + i * 12;
            let lblk = u64::from(le.u32(at)?);
            let raw_len = u64::from(le.u16(at + 4)?);
            let pblk = (u64::from(le.u16(at + 6)?) << 32) | u64::from(le.u32(at + 8)?);
            let (len, init) = if raw_len > INIT_MAX {
                (raw_len - INIT_MAX, false)
            } else {
                (raw_len, true)
            };
            if len == 0 {
                return Err(self.err(format!("zero-length extent at logical block {lblk}")));
            }
            let lend = lblk + len;
            if lblk < bounds.start || lend > bounds.end {
                return Err(self.err(format!(
                    "extent {lblk}..{lend} lies outside its index range {}..{}",
                    bounds.start, bounds.end
                )));
            }
            if lblk < self.prev_end {
                return Err(self.err(format!(
                    "extent at logical block {lblk} overlaps or precedes the one before"
                )));
            }
            self.prev_end = lend;
            if pblk
                .checked_add(len)
                .is_none_or(|e| e > self.fs.sb.blocks_count)
            {
                return Err(self.err(format!(
                    "extent at logical block {lblk} points at blocks {pblk}+{len}, past the end of the filesystem"
                )));
            }
            if lblk >= want.end {
                break;
            }
            let s = lblk.max(want.start);
            let e = lend.min(want.end);
            if s < e {
                out.push(Run {
                    lblk: s,
                    len: e - s,
                    pblk: pblk + (s - lblk),
                    init,
                })?;
            }
        }
        Ok(())
    }
}
