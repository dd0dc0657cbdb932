//! Indirect block maps (ext2, ext3, and ext4 files without EXTENTS_FL): `i_block` holds 12
//! direct block pointers, then one single-, one double- and one triple-indirect pointer;
//! an indirect block is an array of `block_size / 4` pointers. A zero pointer at any level
//! is a hole covering everything below it.
//!
//! Guards: pointers must lie inside the volume; the last block read at each level is
//! kept, so pointers that all name the same indirect block cost one read; and one walk
//! examines at most 2^30 pointers (a 4 TiB file at 4 KiB blocks), so an indirect tree whose
//! entries all point at the same block cannot multiply the work without bound.

use super::data::{Run, Runs};
use super::Ext4;
use crate::fs::{read_vec, Le};
use crate::{Error, Result};
use std::ops::Range;

const DIRECT: u64 = 12;
const MAX_POINTERS: u64 = 1 << 30;

/// Adds the runs of the block map in `i_block` that overlap the logical blocks `want`.
pub fn collect(
    fs: &Ext4,
    ino: u64,
    i_block: &[u8],
    want: Range<u64>,
    out: &mut Runs,
) -> Result<()> {
    let le = Le::new(i_block, "ext4: block map");
    let mut w = Walker {
        fs,
        ino,
        per: fs.sb.block_size / 4,
        cache: Default::default(),
        examined: 0,
    };
    for i in 0..DIRECT.min(want.end) {
        if i >= want.start {
            let p = u64::from(le.u32(i as usize * 4)?);
            w.data(i, p, out)?;
        }
    }
    let mut base = DIRECT;
    for level in 1..=3u32 {
        let span = w.per.pow(level);
        let ptr = u64::from(le.u32((11 + level as usize) * 4)?);
        if ptr != 0 && base < want.end && base + span > want.start {
            w.indirect(level, ptr, base, &want, out)?;
        }
        base += span;
    }
    Ok(())
}

struct Walker<'a> {
    fs: &'a Ext4,
    ino: u64,
    /// Pointers per indirect block.
    per: u64,
    /// The last indirect block read at each level: (block number, contents).
    cache: [Option<(u64, Vec<u8>)>; 4],
    examined: u64,
}

impl Walker<'_> {
    fn check(&self, p: u64) -> Result<()> {
        if p >= self.fs.sb.blocks_count {
            return Err(Error::Guest(format!(
                "ext4: inode {}: block map points at block {p}, past the end of the filesystem",
                self.ino
            )));
        }
        Ok(())
    }

    fn data(&mut self, lblk: u64, p: u64, out: &mut Runs) -> Result<()> {
        if p == 0 {
            return Ok(());
        }
        self.check(p)?;
        out.push(Run {
            lblk,
            len: 1,
            pblk: p,
            init: true,
        })
    }

    /// Walks the indirect block `ptr` at `level` (1 = its pointers are data blocks), which
    /// maps the logical blocks from `base`.
    fn indirect(
        &mut self,
        level: u32,
        ptr: u64,
        base: u64,
        want: &Range<u64>,
        out: &mut Runs,
    ) -> Result<()> {
        self.check(ptr)?;
        let lvl = level as usize;
        let cached = matches!(self.cache.get(lvl), Some(Some((b, _))) if *b == ptr);
        if !cached {
            let sb = &self.fs.sb;
            let block = read_vec(
                self.fs.dev.as_ref(),
                ptr * sb.block_size,
                sb.block_size,
                1 << 16,
                "ext4: indirect block",
            )?;
            if let Some(slot) = self.cache.get_mut(lvl) {
                *slot = Some((ptr, block));
            }
        }
        // Taken out while the children are walked, so deeper levels can use their own slot.
        let Some(Some((_, block))) = self.cache.get_mut(lvl).map(Option::take) else {
            return Ok(());
        };
        let child_span = self.per.pow(level - 1);
        let first = want.start.saturating_sub(base) / child_span;
        let last = (want.end - base).div_ceil(child_span).min(self.per);
        let r = self.children(level, &block, base, child_span, first..last, want, out);
        if let Some(slot) = self.cache.get_mut(lvl) {
            *slot = Some((ptr, block));
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn children(
        &mut self,
        level: u32,
        block: &[u8],
        base: u64,
        child_span: u64,
        idx: Range<u64>,
        want: &Range<u64>,
        out: &mut Runs,
    ) -> Result<()> {
        let le = Le::new(block, "ext4: indirect block");
        self.examined += idx.end.saturating_sub(idx.start);
        if self.examined > MAX_POINTERS {
            return Err(Error::Guest(format!(
                "ext4: inode {}: block map needs more than {MAX_POINTERS} pointers examined",
                self.ino
            )));
        }
        for i in idx {
            let p = u64::from(le.u32(i as usize * 4)?);
            if p == 0 {
                continue;
            }
            let lblk = base + i * child_span;
            if level == 1 {
                self.data(lblk, p, out)?;
            } else {
                self.indirect(level - 1, p, lblk, want, out)?;
            }
        }
        Ok(())
    }
}
