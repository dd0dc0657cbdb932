//! The MBR (DOS) partition table: four 16-byte entries at byte 446 of sector 0, signed
//! 0x55AA at byte 510, in 512-byte sectors.
//!
//! An extended partition (type 0x05, 0x0f or 0x85) holds a chain of EBRs. Each EBR is an
//! MBR-shaped sector whose data entry starts relative to the EBR itself and whose link
//! entry (an extended type) points to the next EBR relative to the start of the extended
//! partition. Logical partitions are numbered from 5 in chain order, as Linux does; like
//! Linux, slots 3 and 4 of an EBR are read only when they lie inside the extended
//! partition (they often hold garbage).
//!
//! Sector 0 ends in 0x55AA on FAT and NTFS volumes too, so a table is only accepted when
//! every entry is sane and sector 0 is not a filesystem boot sector whose filesystem
//! would cover the partitions it seems to list.

use super::{drop_overlaps, types, Partition, PartitionTable, TableKind};
use crate::blockdev::{fits, BlockRead};
use crate::fs::Le;
use crate::Result;
use std::collections::HashSet;

/// EBRs followed in one chain at most.
const MAX_EBRS: usize = 256;
/// Logical partitions on one disk at most.
const MAX_LOGICAL: u32 = 256;
const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub boot: u8,
    pub kind: u8,
    pub start: u32,
    pub len: u32,
}

/// The four entries of an MBR-shaped sector.
pub(super) fn entries(s: &[u8; 512]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let o = 446 + 16 * i;
        let u32_at = |a: usize| u32::from_le_bytes([s[a], s[a + 1], s[a + 2], s[a + 3]]);
        Entry {
            boot: s[o],
            kind: s[o + 4],
            start: u32_at(o + 8),
            len: u32_at(o + 12),
        }
    })
}

/// The MBR of a disk whose sector 0 is signed and has no protective entry; None if it is
/// not a partition table.
pub(super) fn read(dev: &dyn BlockRead, s0: &[u8; 512]) -> Result<Option<PartitionTable>> {
    let sectors = dev.size() / SECTOR;
    let es = entries(s0);
    let mut first_start = u64::MAX;
    for e in &es {
        if e.boot != 0 && e.boot != 0x80 {
            return Ok(None);
        }
        if e.kind == 0 {
            if e.start != 0 || e.len != 0 {
                return Ok(None);
            }
            continue;
        }
        let end = e.start as u64 + e.len as u64;
        if e.start == 0 || e.len == 0 || end > sectors {
            return Ok(None);
        }
        first_start = first_start.min(e.start as u64);
    }
    if first_start == u64::MAX {
        // Four empty entries: nothing tells this from any other signed sector 0.
        return Ok(None);
    }
    if fs_extent(s0).is_some_and(|bytes| bytes > first_start * SECTOR) {
        return Ok(None);
    }

    let mut warnings = Vec::new();
    let mut parts = Vec::new();
    for (i, e) in es.iter().enumerate() {
        if e.kind != 0 {
            parts.push(partition(i as u32 + 1, e.start as u64, e));
        }
    }
    let mut next = 5u32;
    for e in es.iter().filter(|e| types::mbr_extended(e.kind)) {
        let ext = e.start as u64..e.start as u64 + e.len as u64;
        chain(dev, ext, &mut next, &mut parts, &mut warnings)?;
    }
    let partitions = drop_overlaps(parts, "MBR", &mut warnings);
    Ok(Some(PartitionTable {
        kind: TableKind::Mbr,
        sector_size: SECTOR as u32,
        partitions,
        warnings,
    }))
}

fn partition(number: u32, start: u64, e: &Entry) -> Partition {
    Partition {
        number,
        start: start * SECTOR,
        len: e.len as u64 * SECTOR,
        type_id: format!("{:#04x}", e.kind),
        type_name: types::mbr_name(e.kind).to_string(),
        name: None,
        extended: types::mbr_extended(e.kind),
        guid: None,
        bootable: e.boot == 0x80,
    }
}

/// Follows the EBR chain of the extended partition at sectors `ext`, adding its logical
/// partitions numbered from `*next`.
fn chain(
    dev: &dyn BlockRead,
    ext: std::ops::Range<u64>,
    next: &mut u32,
    parts: &mut Vec<Partition>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let sectors = dev.size() / SECTOR;
    let mut cur = ext.start;
    let mut seen = HashSet::new();
    loop {
        if seen.len() >= MAX_EBRS || *next >= 5 + MAX_LOGICAL {
            warnings.push(format!(
                "MBR: the EBR chain of the extended partition at LBA {} is longer than \
                 {MAX_EBRS} links or {MAX_LOGICAL} partitions; cut there",
                ext.start
            ));
            return Ok(());
        }
        if !seen.insert(cur) {
            warnings.push(format!(
                "MBR: the EBR chain loops back to LBA {cur}; cut there"
            ));
            return Ok(());
        }
        let mut sec = [0u8; 512];
        if !fits(cur * SECTOR, 512, dev.size()) {
            warnings.push(format!(
                "MBR: EBR at LBA {cur} lies past the end of the disk"
            ));
            return Ok(());
        }
        dev.read_at(cur * SECTOR, &mut sec)?;
        if Le::new(&sec, "EBR").u16(510)? != 0xAA55 {
            warnings.push(format!(
                "MBR: EBR at LBA {cur} has no 0x55AA signature; the chain ends there"
            ));
            return Ok(());
        }
        let es = entries(&sec);
        for (slot, e) in es.iter().enumerate() {
            if e.kind == 0 || e.len == 0 || types::mbr_extended(e.kind) {
                continue;
            }
            let start = cur + e.start as u64;
            let end = start + e.len as u64;
            let inside = start >= ext.start && end <= ext.end;
            if slot >= 2 && !inside {
                continue;
            }
            let number = *next;
            *next += 1;
            if end > sectors || e.start == 0 {
                warnings.push(format!(
                    "MBR: logical partition {number} (LBA {start}..{end}) lies outside the \
                     disk or over its EBR; dropped"
                ));
                continue;
            }
            if !inside {
                warnings.push(format!(
                    "MBR: logical partition {number} (LBA {start}..{end}) lies outside its \
                     extended partition (LBA {}..{})",
                    ext.start, ext.end
                ));
            }
            parts.push(partition(number, start, e));
            if *next >= 5 + MAX_LOGICAL {
                break;
            }
        }
        let Some(link) = es
            .iter()
            .find(|e| e.len != 0 && types::mbr_extended(e.kind))
        else {
            return Ok(());
        };
        let to = ext.start + link.start as u64;
        if to >= ext.end {
            warnings.push(format!(
                "MBR: EBR at LBA {cur} links to LBA {to}, outside its extended partition \
                 (LBA {}..{}); the chain ends there",
                ext.start, ext.end
            ));
            return Ok(());
        }
        cur = to;
    }
}

/// The bytes a FAT, NTFS or exFAT boot sector in `s` says its filesystem covers, None if
/// `s` is not one.
fn fs_extent(s: &[u8; 512]) -> Option<u64> {
    let le = Le::new(s, "boot sector");
    let oem = le.bytes(3, 8).ok()?;
    if oem == b"NTFS    " {
        let bps = le.u16(11).ok()? as u64;
        return Some(le.u64(40).ok()?.saturating_mul(bps));
    }
    if oem == b"EXFAT   " {
        let shift = le.u8(108).ok()?.min(12);
        return Some(le.u64(72).ok()?.saturating_mul(1 << shift));
    }
    let jump = (s[0] == 0xEB && s[2] == 0x90) || s[0] == 0xE9;
    let bps = le.u16(11).ok()?;
    let spc = s[13];
    let reserved = le.u16(14).ok()?;
    let fats = s[16];
    let media = s[21];
    let bpb = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved >= 1
        && (1..=2).contains(&fats)
        && (media == 0xF0 || media >= 0xF8);
    if !(jump && bpb) {
        return None;
    }
    let total = match le.u16(19).ok()? {
        0 => le.u32(32).ok()? as u64,
        n => n as u64,
    };
    Some(total * bps as u64)
}
