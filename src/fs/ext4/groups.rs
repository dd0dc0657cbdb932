//! Block groups: the descriptor table (where each group's bitmaps and inode table are),
//! and the block bitmaps read back as the volume's used ranges.
//!
//! The descriptors follow the superblock in the next block, 32 bytes each (64 or more with
//! the 64bit feature, whose second half holds the high 32 bits of each block number).
//! With meta_bg, descriptors past `s_first_meta_bg` blocks are spread instead: the block
//! describing groups `m*D..(m+1)*D` sits in the first block of group `m*D` (after its
//! superblock backup, if any). flex_bg only moves the bitmaps and inode tables, which the
//! descriptors point at wherever they are.

use super::superblock::{
    Superblock, COMPAT_SPARSE_SUPER2, INCOMPAT_META_BG, RO_COMPAT_GDT_CSUM,
    RO_COMPAT_METADATA_CSUM, RO_COMPAT_SPARSE_SUPER,
};
use crate::blockdev::BlockRead;
use crate::fs::{read_vec, Le};
use crate::{Error, Result};
use std::ops::Range;

/// `bg_flags`: the block bitmap was never written (only the group's own metadata is used).
const BG_BLOCK_UNINIT: u16 = 0x2;

/// One group descriptor, with 64-bit block numbers assembled.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub flags: u16,
}

/// Reads every group descriptor. The table grows as reads succeed, so a superblock that
/// claims millions of groups on a small volume fails on the first unreadable block rather
/// than allocating for the claim.
pub fn load(dev: &dyn BlockRead, sb: &Superblock) -> Result<Vec<Group>> {
    let per_block = sb.descs_per_block();
    let table_blocks = sb.group_count.div_ceil(per_block);
    let mut out = Vec::with_capacity(sb.group_count.min(1 << 16) as usize);
    for i in 0..table_blocks {
        let block = desc_block(sb, i)?;
        let at = block.checked_mul(sb.block_size).ok_or_else(|| {
            Error::Guest(format!("ext4: group descriptor block {block} overflows"))
        })?;
        let buf = read_vec(
            dev,
            at,
            sb.block_size,
            1 << 16,
            "ext4: group descriptor block",
        )?;
        for j in 0..per_block {
            if out.len() as u64 >= sb.group_count {
                break;
            }
            let d = (j * sb.desc_size) as usize;
            out.push(parse(&buf, d, sb.desc_size)?);
        }
    }
    Ok(out)
}

fn parse(buf: &[u8], at: usize, desc_size: u64) -> Result<Group> {
    let le = Le::new(buf, "ext4: group descriptor");
    let wide = desc_size >= 64;
    let hi = |off: usize| -> Result<u64> {
        Ok(if wide {
            u64::from(le.u32(at + off)?) << 32
        } else {
            0
        })
    };
    Ok(Group {
        block_bitmap: u64::from(le.u32(at)?) | hi(0x20)?,
        inode_bitmap: u64::from(le.u32(at + 0x4)?) | hi(0x24)?,
        inode_table: u64::from(le.u32(at + 0x8)?) | hi(0x28)?,
        flags: le.u16(at + 0x12)?,
    })
}

/// Block number of descriptor block `i`.
fn desc_block(sb: &Superblock, i: u64) -> Result<u64> {
    if !sb.has_incompat(INCOMPAT_META_BG) || i < sb.first_meta_bg {
        return Ok(sb.superblock_block() + 1 + i);
    }
    let g = i.saturating_mul(sb.descs_per_block());
    let mut skip = u64::from(has_super(sb, g));
    // A 1 KiB-block volume with first_data_block 0 (bigalloc) keeps the superblock in block 1.
    if sb.block_size == 1024 && i == 0 && sb.first_data_block == 0 {
        skip += 1;
    }
    group_first_block(sb, g)
        .and_then(|b| b.checked_add(skip))
        .ok_or_else(|| Error::Guest(format!("ext4: group descriptor block {i} overflows")))
}

pub fn group_first_block(sb: &Superblock, g: u64) -> Option<u64> {
    g.checked_mul(sb.blocks_per_group)?
        .checked_add(sb.first_data_block)
}

/// True if group `g` holds a superblock backup (and, without meta_bg, a descriptor
/// table copy): every group, or with sparse_super groups 0, 1 and powers of 3, 5 and 7,
/// or with sparse_super2 only the two groups the superblock names.
pub fn has_super(sb: &Superblock, g: u64) -> bool {
    if g == 0 {
        return true;
    }
    if sb.has_compat(COMPAT_SPARSE_SUPER2) {
        return g == sb.backup_bgs[0] || g == sb.backup_bgs[1];
    }
    if g == 1 || !sb.has_ro_compat(RO_COMPAT_SPARSE_SUPER) {
        return true;
    }
    if g % 2 == 0 {
        return false;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p = p.saturating_mul(base);
        }
        p == g
    })
}

/// Blocks at the start of group `g` taken by its superblock backup and descriptor blocks
/// (what an uninitialised block bitmap would have set).
fn base_meta_blocks(sb: &Superblock, g: u64) -> u64 {
    let super_blocks = u64::from(has_super(sb, g));
    let per_block = sb.descs_per_block();
    let meta_bg = sb.has_incompat(INCOMPAT_META_BG);
    if !meta_bg || g / per_block < sb.first_meta_bg {
        if super_blocks == 0 {
            return 0;
        }
        let gdt = if meta_bg {
            sb.first_meta_bg
        } else {
            sb.group_count.div_ceil(per_block)
        };
        return 1u64
            .saturating_add(gdt)
            .saturating_add(sb.reserved_gdt_blocks);
    }
    let pos = g % per_block;
    let desc = u64::from(pos == 0 || pos == 1 || pos == per_block - 1);
    super_blocks + desc
}

/// Blocks of the inode table of one group.
pub fn inode_table_blocks(sb: &Superblock) -> u64 {
    (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(sb.block_size)
}

/// Calls `f` with each used range of blocks, in order, merged. Used means: set in the
/// group's block bitmap (each bit a cluster with bigalloc), or metadata (the blocks before
/// the first group, every group's bitmaps and inode table, and, for groups whose bitmap
/// was never initialised, their superblock backup and descriptor blocks). Errs on the
/// conservative side: a block wrongly called free could lose data in a chunker that
/// skips free space; one wrongly called used only costs space.
pub fn for_each_used(
    dev: &dyn BlockRead,
    sb: &Superblock,
    groups: &[Group],
    f: &mut dyn FnMut(Range<u64>) -> Result<()>,
) -> Result<()> {
    let uninit_ok = sb.has_ro_compat(RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM);
    let itable = inode_table_blocks(sb);
    // Every group's metadata, sorted and merged (flex_bg packs them, so this stays short).
    let mut meta: Vec<Range<u64>> = Vec::with_capacity(groups.len().min(1 << 16));
    for gd in groups {
        for r in [
            gd.block_bitmap..gd.block_bitmap.saturating_add(1),
            gd.inode_bitmap..gd.inode_bitmap.saturating_add(1),
            gd.inode_table..gd.inode_table.saturating_add(itable),
        ] {
            let r = r.start.min(sb.blocks_count)..r.end.min(sb.blocks_count);
            if !r.is_empty() {
                meta.push(r);
            }
        }
    }
    meta.sort_by_key(|r| r.start);
    let meta = merge(meta);
    let mut out = Merger { pending: None, f };
    out.push(0..sb.first_data_block)?;
    let mut mi = 0usize;
    let bits_per_group = sb.blocks_per_group / sb.cluster_ratio;
    for (g, gd) in groups.iter().enumerate() {
        let g = g as u64;
        let Some(start) = group_first_block(sb, g) else {
            break;
        };
        if start >= sb.blocks_count {
            break;
        }
        let end = start
            .saturating_add(sb.blocks_per_group)
            .min(sb.blocks_count);
        let mut bitmap = if uninit_ok && gd.flags & BG_BLOCK_UNINIT != 0 {
            let mut b = vec![0u8; sb.block_size as usize];
            let n = base_meta_blocks(sb, g).div_ceil(sb.cluster_ratio);
            set_bits(&mut b, 0..n);
            b
        } else {
            let at = gd.block_bitmap.checked_mul(sb.block_size).ok_or_else(|| {
                Error::Guest(format!("ext4: group {g}: block bitmap block overflows"))
            })?;
            read_vec(
                dev,
                at,
                sb.block_size,
                1 << 16,
                &format!("ext4: group {g}: block bitmap"),
            )?
        };
        while meta.get(mi).is_some_and(|r| r.end <= start) {
            mi += 1;
        }
        let mut k = mi;
        while let Some(r) = meta.get(k).filter(|r| r.start < end) {
            let a = (r.start.max(start) - start) / sb.cluster_ratio;
            let b = (r.end.min(end) - start).div_ceil(sb.cluster_ratio);
            set_bits(&mut bitmap, a..b);
            k += 1;
        }
        let mut bit = 0u64;
        let nbits = bits_per_group.min((end - start).div_ceil(sb.cluster_ratio));
        while bit < nbits {
            let (run, set) = run_at(&bitmap, bit, nbits);
            if set {
                let a = start + bit * sb.cluster_ratio;
                let b = (start + (bit + run) * sb.cluster_ratio).min(end);
                out.push(a..b)?;
            }
            bit += run;
        }
    }
    out.finish()
}

/// Merges ranges sorted by start.
fn merge(v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

struct Merger<'a> {
    pending: Option<Range<u64>>,
    f: &'a mut dyn FnMut(Range<u64>) -> Result<()>,
}

impl Merger<'_> {
    fn push(&mut self, r: Range<u64>) -> Result<()> {
        if r.is_empty() {
            return Ok(());
        }
        match &mut self.pending {
            Some(p) if p.end >= r.start => p.end = p.end.max(r.end),
            p => {
                if let Some(done) = p.replace(r) {
                    (self.f)(done)?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if let Some(done) = self.pending.take() {
            (self.f)(done)?;
        }
        Ok(())
    }
}

fn set_bits(b: &mut [u8], r: Range<u64>) {
    for i in r {
        if let Some(byte) = b.get_mut((i / 8) as usize) {
            *byte |= 1 << (i % 8);
        }
    }
}

fn bit(b: &[u8], i: u64) -> bool {
    b.get((i / 8) as usize)
        .is_some_and(|v| v & (1 << (i % 8)) != 0)
}

/// Length of the run of equal bits starting at `i` (stopping at `n`), and its value.
fn run_at(b: &[u8], i: u64, n: u64) -> (u64, bool) {
    let v = bit(b, i);
    let mut j = i + 1;
    while j < n {
        if j % 8 == 0 && j + 8 <= n {
            let whole = if v { 0xff } else { 0 };
            if b.get((j / 8) as usize) == Some(&whole) {
                j += 8;
                continue;
            }
        }
        if bit(b, j) != v {
            break;
        }
        j += 1;
    }
    (j - i, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_runs() {
        let b = [0b1111_0000u8, 0xff, 0xff, 0x01, 0];
        assert_eq!(run_at(&b, 0, 40), (4, false));
        assert_eq!(run_at(&b, 4, 40), (21, true));
        assert_eq!(run_at(&b, 25, 40), (15, false));
        assert_eq!(run_at(&b, 4, 10), (6, true));
    }
}
