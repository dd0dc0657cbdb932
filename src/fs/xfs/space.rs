//! The space in use, from the free-space btrees: each AG's AGF (sector 1 of the AG) roots
//! a btree of free extents by block number (`ABTB`/`AB3B` blocks, short 32-bit AG-relative
//! pointers); the AGFL (sector 3) lists a few more free blocks held for btree splits.
//! Whatever in an AG is not listed free is in use (AG headers, inodes, metadata, data, the
//! internal log).

use super::be::{guest, Be};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::Result;
use std::collections::HashSet;
use std::ops::Range;

const AGF_MAGIC: u32 = 0x5841_4746; // "XAGF"
const ABTB_MAGIC: u32 = 0x4142_5442; // "ABTB" (v4)
const AB3B_MAGIC: u32 = 0x4142_3342; // "AB3B" (v5)
const AGFL_MAGIC: u32 = 0x5841_464c; // "XAFL" (v5)
const MAX_LEVELS: u32 = 10;

/// Free extents of AG `agno`, as sorted, disjoint AG block ranges.
fn free_in_ag(dev: &dyn BlockRead, sb: &Superblock, agno: u32) -> Result<Vec<Range<u64>>> {
    let mut sect = vec![0u8; sb.sectsize as usize];
    dev.read_at(sb.ag_offset(agno, 0)? + sb.sectsize as u64, &mut sect)?;
    let what = format!("XFS: AGF of AG {agno}");
    let r = Be::new(&sect, &what);
    if r.u32(0)? != AGF_MAGIC || r.u32(8)? != agno {
        return Err(guest(format!("AG {agno}: no AGF header (magic or number)")));
    }
    let len = r.u32(12)? as u64;
    if len == 0 || len != sb.ag_len(agno) {
        return Err(guest(format!("AG {agno}: AGF length {len} blocks")));
    }
    let root = r.u32(16)? as u64;
    let levels = r.u32(28)?;
    if levels == 0 || levels > MAX_LEVELS {
        return Err(guest(format!(
            "AG {agno}: free-space btree of {levels} levels"
        )));
    }
    let (hdr, magic) = if sb.features.crc {
        (56usize, AB3B_MAGIC)
    } else {
        (16usize, ABTB_MAGIC)
    };
    let bs = sb.blocksize as usize;
    let leaf_max = (bs - hdr) / 8;
    let node_max = (bs - hdr) / 12;
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, levels - 1)];
    let mut buf = vec![0u8; bs];
    while let Some((agbno, level)) = stack.pop() {
        if agbno >= len || !seen.insert(agbno) {
            return Err(guest(format!(
                "AG {agno}: free-space btree block {agbno} outside the AG or reached twice"
            )));
        }
        dev.read_at(sb.ag_offset(agno, agbno)?, &mut buf)?;
        let what = format!("XFS: AG {agno}: free-space btree block {agbno}");
        let b = Be::new(&buf, &what);
        let n = b.u16(6)? as usize;
        if b.u32(0)? != magic || b.u16(4)? as u32 != level {
            return Err(guest(format!(
                "AG {agno}: free-space btree block {agbno}: bad magic or level"
            )));
        }
        if level == 0 {
            if n > leaf_max {
                return Err(guest(format!(
                    "AG {agno}: free-space leaf with {n} records"
                )));
            }
            for i in 0..n {
                let start = b.u32(hdr + i * 8)? as u64;
                let count = b.u32(hdr + i * 8 + 4)? as u64;
                let end = start + count;
                if count == 0 || end > len || out.last().is_some_and(|l| l.end > start) {
                    return Err(guest(format!(
                        "AG {agno}: free extent {start}+{count} out of order or outside the AG"
                    )));
                }
                out.push(start..end);
            }
        } else {
            if n == 0 || n > node_max {
                return Err(guest(format!(
                    "AG {agno}: free-space node with {n} records"
                )));
            }
            let base = hdr + node_max * 8;
            for i in (0..n).rev() {
                stack.push((b.u32(base + i * 4)? as u64, level - 1));
            }
        }
    }
    out.extend(free_list(dev, sb, agno, &r, len)?);
    out.sort_by_key(|r| r.start);
    Ok(out)
}

/// The blocks on AG `agno`'s free list (the AGFL, sector 3: a ring of block numbers kept
/// for btree splits; free, though the btrees do not list them).
fn free_list(
    dev: &dyn BlockRead,
    sb: &Superblock,
    agno: u32,
    agf: &Be,
    len: u64,
) -> Result<Vec<Range<u64>>> {
    let (first, count) = (agf.u32(40)? as usize, agf.u32(48)? as usize);
    let mut sect = vec![0u8; sb.sectsize as usize];
    dev.read_at(sb.ag_offset(agno, 0)? + 3 * sb.sectsize as u64, &mut sect)?;
    let hdr = if sb.features.crc {
        if sect.get(..4) != Some(&AGFL_MAGIC.to_be_bytes()[..]) {
            return Err(guest(format!("AG {agno}: no AGFL header")));
        }
        36
    } else {
        0
    };
    let size = (sect.len() - hdr) / 4;
    if count > size || (count > 0 && first >= size) {
        return Err(guest(format!(
            "AG {agno}: free list of {count} blocks from slot {first} (room for {size})"
        )));
    }
    let what = format!("XFS: AGFL of AG {agno}");
    let r = Be::new(&sect, &what);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let b = r.u32(hdr + (first + i) % size * 4)? as u64;
        if b >= len {
            return Err(guest(format!(
                "AG {agno}: free list block {b} outside the AG"
            )));
        }
        out.push(b..b + 1);
    }
    Ok(out)
}

/// Volume byte ranges in use, sorted and merged.
pub(super) fn used(dev: &dyn BlockRead, sb: &Superblock) -> Result<Vec<Range<u64>>> {
    let bs = sb.blocksize as u64;
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut push = |r: Range<u64>| {
        if r.start >= r.end {
            return;
        }
        let r = r.start * bs..r.end * bs;
        match out.last_mut() {
            Some(l) if l.end == r.start => l.end = r.end,
            _ => out.push(r),
        }
    };
    for agno in 0..sb.agcount {
        let base = agno as u64 * sb.agblocks as u64;
        let mut pos = 0;
        for f in free_in_ag(dev, sb, agno)? {
            push(base + pos..base + f.start.max(pos));
            pos = pos.max(f.end);
        }
        push(base + pos..base + sb.ag_len(agno));
    }
    Ok(out)
}
