//! Partition tables of a guest disk: GPT and MBR (with logical partitions in an extended
//! partition's chain of EBRs), read from the raw bytes of a [`BlockRead`].
//!
//! Supported:
//! - GPT with 512- or 4096-byte sectors: protective (or hybrid) MBR, header and entry-array
//!   CRC32s checked, the backup header at the last LBA used (with a warning) when the
//!   primary header or its entries are damaged, UTF-16LE partition names, partitions
//!   numbered by entry index + 1 as Linux numbers them. A GPT whose protective MBR was
//!   wiped is still read (with a warning) when its primary header is intact.
//! - MBR with up to four primary partitions (numbered 1-4 by slot) and extended partitions
//!   (types 0x05, 0x0f, 0x85) whose EBR chains give logical partitions 5, 6, … in chain
//!   order, as Linux numbers them.
//!
//! Refused or left out:
//! - partitions lying outside the disk, ending before they start, or overlapping an
//!   earlier one are dropped, each with a warning in [`PartitionTable::warnings`];
//! - EBR chains are cut at 256 links, at a loop, or at a link outside the extended
//!   partition (with a warning); GPT entry arrays over 1 MiB are refused;
//! - MBRs are read with 512-byte sectors (an MBR does not say its sector size);
//! - BSD disklabels, Solaris VTOCs, Apple partition maps and Windows dynamic disks (LDM)
//!   are not read: their partitions appear as one partition of their MBR/GPT type.
//!
//! "No table" ([`read`] gives `None`) is a blank disk, a filesystem on the whole disk, or a
//! sector 0 that ends in 0x55AA without being a partition table: a FAT/NTFS/exFAT boot
//! sector (whose filesystem would cover the partitions it seems to list), or entries that
//! are not sane (boot flag other than 0x00/0x80, an empty type with a non-empty range, a
//! range outside the disk).

mod gpt;
mod mbr;
mod types;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use crate::blockdev::BlockRead;
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// One partition, in bytes of the disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// The number Linux gives it (`sda<number>`).
    pub number: u32,
    /// Offset of its first byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// GPT: the type GUID in lower case ("0fc63daf-8483-4772-8e79-3d69d8477de4");
    /// MBR: the type byte ("0x83").
    pub type_id: String,
    /// A name for the type: "Linux filesystem", "EFI System", "Linux LVM", "Linux swap",
    /// "Microsoft basic data", "BIOS boot", "Windows recovery", "extended", "unknown", …
    /// MBR types with a GPT equivalent use the GPT name (0x83 is "Linux filesystem").
    pub type_name: String,
    /// The GPT partition name, if not empty.
    pub name: Option<String>,
    /// An MBR extended partition: a container of logical partitions, holding no
    /// filesystem itself.
    pub extended: bool,
    /// GPT: the partition's unique GUID (lower case).
    pub guid: Option<String>,
    /// MBR: the boot flag (0x80) is set.
    pub bootable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    /// The sector size the table is expressed in (GPT: 512 or 4096; MBR: 512).
    pub sector_size: u32,
    /// Partitions in number order.
    pub partitions: Vec<Partition>,
    /// Damage read around: a backup GPT header used, partitions dropped, a cut EBR chain.
    pub warnings: Vec<String>,
}

/// The partition table of `dev`.
///
/// Order of the checks: a protective (type 0xEE) entry in a signed MBR means GPT (an error
/// if neither GPT header can be read); else a sane MBR; else an intact primary GPT header
/// without its protective MBR; else no table.
/// None when the disk has no partition table (a filesystem on the whole disk, or blank).
pub fn read(dev: &dyn BlockRead) -> Result<Option<PartitionTable>> {
    if dev.size() < 512 {
        return Ok(None);
    }
    let mut s0 = [0u8; 512];
    dev.read_at(0, &mut s0)?;
    let signed = s0[510..512] == [0x55, 0xAA];
    let entries = mbr::entries(&s0);
    if signed && entries.iter().any(|e| e.kind == 0xEE) {
        let mut warnings = Vec::new();
        let others = entries
            .iter()
            .filter(|e| e.kind != 0xEE && e.kind != 0)
            .count();
        if others > 0 {
            warnings.push(format!(
                "MBR: hybrid MBR ({others} entries besides the GPT protective one); \
                 the GPT is used and those entries are ignored"
            ));
        }
        return gpt::read(dev, warnings).map(Some);
    }
    if signed {
        if let Some(t) = mbr::read(dev, &s0)? {
            return Ok(Some(t));
        }
    }
    gpt::read_unprotected(dev)
}

/// Drops partitions that overlap one kept before them (by start, then number), with a
/// warning each. Extended containers are neither checked nor checked against: their
/// logical partitions lie inside them by design.
fn drop_overlaps(parts: Vec<Partition>, what: &str, warnings: &mut Vec<String>) -> Vec<Partition> {
    let mut order: Vec<Partition> = parts;
    order.sort_by_key(|p| (p.extended, p.start, p.number));
    let mut kept: Vec<Partition> = Vec::with_capacity(order.len());
    // The kept partition reaching furthest so far: (end, number).
    let mut reach: Option<(u64, u32)> = None;
    for p in order {
        if p.extended {
            kept.push(p);
            continue;
        }
        let end = p.start.saturating_add(p.len);
        match reach {
            Some((r, n)) if p.start < r => {
                warnings.push(format!(
                    "{what}: partition {} (bytes {}..{end}) overlaps partition {n}; dropped",
                    p.number, p.start
                ));
                continue;
            }
            Some((r, _)) if r >= end => {}
            _ => reach = Some((end, p.number)),
        }
        kept.push(p);
    }
    kept.sort_by_key(|p| p.number);
    kept
}
