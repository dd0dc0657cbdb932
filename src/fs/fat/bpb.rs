//! The boot sector's BIOS parameter block (BPB) and the volume layout it implies.
//!
//! A FAT volume is, in order: reserved sectors (the boot sector first; FAT32 also keeps its
//! FSInfo sector and a backup boot sector there), one or two copies of the FAT, the fixed
//! root directory region (FAT12/16 only), then the data region of clusters numbered from 2.
//! Everything here is computed from the BPB with the formulas of Microsoft's FAT
//! specification ("FAT: General Overview of On-Disk Format"), in 64-bit arithmetic so no
//! on-disk number can overflow it.

use super::names::cp437;
use crate::fs::Le;
use crate::{Error, Result};

/// The FAT variant, named by the width of a FAT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }
}

/// The Microsoft rule: the cluster count alone decides the FAT type.
const FAT12_MAX: u64 = 4084;
const FAT16_MAX: u64 = 65524;
/// Cluster numbers run 2..=0x0FFF_FFF6 (0x0FFF_FFF7 marks a bad cluster).
const FAT32_MAX: u64 = 0x0FFF_FFF5;

/// Where everything lies, in bytes from the start of the volume.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub fat_type: FatType,
    pub cluster_size: u64,
    /// The FAT this reader follows (the first, or FAT32's active one when mirroring is off).
    pub fat_offset: u64,
    /// Bytes of that FAT holding the entries of clusters 0..clusters+2.
    pub fat_used: u64,
    /// FAT12/16 fixed root directory region.
    pub root_offset: u64,
    pub root_entries: u64,
    pub data_offset: u64,
    /// Number of data clusters (numbered 2..clusters+2).
    pub clusters: u64,
    /// FAT32: the first cluster of the root directory.
    pub root_cluster: u32,
    /// The label in the BPB's extended boot record, if it has one.
    pub bpb_label: Option<String>,
    /// Things read around: an undersized FAT32, the boot sector's dirty flag.
    pub notes: Vec<String>,
}

impl Geometry {
    /// Byte offset just past the last data cluster.
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.clusters * self.cluster_size
    }

    /// Volume byte offset of cluster `c` (2 ≤ c < clusters + 2, checked by the caller).
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c).saturating_sub(2) * self.cluster_size
    }
}

/// The checks every FAT boot sector passes, shared by [`probe`](super::probe) and
/// [`parse`]: a jump instruction, 0x55AA, power-of-two sector and cluster sizes, reserved
/// sectors, one or two FATs; and not the OEM ids NTFS and exFAT put in the same place.
fn sane(b: &[u8]) -> Result<()> {
    let le = Le::new(b, "FAT boot sector");
    let bad = |what: String| Err(Error::Guest(format!("FAT boot sector: {what}")));
    let oem = le.bytes(3, 8)?;
    if oem == b"EXFAT   " {
        return Err(Error::Unsupported(
            "exFAT volumes are not supported (this reader reads FAT12/16/32)".into(),
        ));
    }
    if oem == b"NTFS    " {
        return bad("the OEM id says NTFS".into());
    }
    let jump = le.u8(0)?;
    if jump != 0xEB && jump != 0xE9 {
        return bad(format!("no jump instruction (first byte {jump:#04x})"));
    }
    if le.u16(510)? != 0xAA55 {
        return bad("no 0x55AA signature".into());
    }
    let bps = le.u16(11)?;
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return bad(format!("{bps} bytes per sector"));
    }
    let spc = le.u8(13)?;
    if !spc.is_power_of_two() {
        return bad(format!("{spc} sectors per cluster is not a power of two"));
    }
    if le.u16(14)? == 0 {
        return bad("no reserved sectors".into());
    }
    let fats = le.u8(16)?;
    if !(1..=2).contains(&fats) {
        return bad(format!("{fats} FATs"));
    }
    Ok(())
}

/// True if the file-system type string of the extended boot record starts with "FAT".
fn type_string(b: &[u8]) -> bool {
    let le = Le::new(b, "FAT boot sector");
    let at = if le.u16(22).unwrap_or(1) == 0 { 82 } else { 54 };
    le.bytes(at, 3).is_ok_and(|s| s == b"FAT")
}

/// The probe's decision over the first 512 bytes of the volume.
pub fn looks_like_fat(b: &[u8], dev_size: u64) -> bool {
    sane(b).is_ok() && (type_string(b) || parse(b, dev_size).is_ok())
}

/// Reads the layout out of the boot sector `b` (at least 512 bytes), refusing any
/// combination the specification does not allow and a FAT too small for its clusters.
pub fn parse(b: &[u8], dev_size: u64) -> Result<Geometry> {
    sane(b)?;
    let le = Le::new(b, "FAT boot sector");
    let bad = |what: String| Err(Error::Guest(format!("FAT boot sector: {what}")));
    let sector_size = u64::from(le.u16(11)?);
    let spc = u64::from(le.u8(13)?);
    let reserved = u64::from(le.u16(14)?);
    let fats = u64::from(le.u8(16)?);
    let root_entries = u64::from(le.u16(17)?);
    let total = match le.u16(19)? {
        0 => u64::from(le.u32(32)?),
        n => u64::from(n),
    };
    let fat16_size = u64::from(le.u16(22)?);
    // A FAT32 BPB is one whose 16-bit FAT size is zero: the 32-bit one follows at 36.
    let fat32_layout = fat16_size == 0;
    let fat_sectors = if fat32_layout {
        u64::from(le.u32(36)?)
    } else {
        fat16_size
    };
    if total == 0 {
        return bad("the total sector count is zero".into());
    }
    if fat_sectors == 0 {
        return bad("the FAT size is zero".into());
    }
    let root_sectors = (root_entries * 32).div_ceil(sector_size);
    let meta = reserved + fats * fat_sectors + root_sectors;
    if meta >= total {
        return bad(format!(
            "the reserved sectors, FATs and root directory ({meta} sectors) fill the whole \
             {total}-sector volume"
        ));
    }
    let clusters = (total - meta) / spc;
    if clusters == 0 {
        return bad("the data region holds no cluster".into());
    }
    let mut notes = Vec::new();
    let by_count = if clusters <= FAT12_MAX {
        FatType::Fat12
    } else if clusters <= FAT16_MAX {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    let fat_type = match (by_count, fat32_layout) {
        (FatType::Fat32, true) | (FatType::Fat12 | FatType::Fat16, false) => by_count,
        (FatType::Fat32, false) => {
            return bad(format!(
                "{clusters} clusters call for FAT32, but the boot sector has the FAT12/16 \
                 layout (a 16-bit FAT size)"
            ))
        }
        // mkfs.fat -F 32 makes these on small volumes, and Linux and mtools read them as
        // FAT32: a FAT12/16 reading of a FAT32 BPB would have no root directory at all.
        (_, true) => {
            notes.push(format!(
                "FAT32 volume with only {clusters} clusters, fewer than the 65525 the FAT \
                 specification requires; read as FAT32, as Linux does"
            ));
            FatType::Fat32
        }
    };
    if fat_type == FatType::Fat32 && clusters > FAT32_MAX {
        return bad(format!(
            "{clusters} clusters are more than FAT32 can number"
        ));
    }
    if fat_type != FatType::Fat32 && root_entries == 0 {
        return bad(format!(
            "{} volume without root directory entries",
            fat_type.name()
        ));
    }
    let entry_bits = match fat_type {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    };
    let fat_used = ((clusters + 2) * entry_bits).div_ceil(8);
    if fat_used > fat_sectors * sector_size {
        return bad(format!(
            "a FAT of {fat_sectors} sectors cannot describe {clusters} clusters"
        ));
    }
    let mut active = 0;
    let mut root_cluster = 0;
    if fat_type == FatType::Fat32 {
        // FSVer and FSInfo (free-cluster hints) are ignored; only the active-FAT choice
        // and the root cluster matter to a reader.
        let flags = le.u16(40)?;
        if flags & 0x80 != 0 {
            active = u64::from(flags & 0x0F);
            if active >= fats {
                return bad(format!(
                    "the active FAT is number {active} of {fats} (FAT mirroring is off)"
                ));
            }
        }
        root_cluster = le.u32(44)?;
        if root_cluster < 2 || u64::from(root_cluster) >= clusters + 2 {
            return bad(format!(
                "the root directory starts at cluster {root_cluster}, outside the \
                 {clusters} clusters"
            ));
        }
    }
    // The extended boot record (signature 0x29) carries a label and the dirty flag Windows
    // NT and Linux keep in its "reserved" byte.
    let ebr = if fat32_layout { 64 } else { 36 };
    let mut bpb_label = None;
    if le.u8(ebr + 2)? == 0x29 {
        let raw = le.bytes(ebr + 7, 11)?;
        if raw != b"NO NAME    " {
            let s = cp437(raw);
            let s = s.trim_end_matches(' ');
            if !s.is_empty() {
                bpb_label = Some(s.to_string());
            }
        }
    }
    if matches!(le.u8(ebr + 2)?, 0x28 | 0x29) && le.u8(ebr + 1)? & 1 != 0 {
        notes.push(
            "the boot sector's dirty flag is set: the volume was not cleanly unmounted".into(),
        );
    }
    let volume_bytes = total * sector_size;
    if volume_bytes > dev_size {
        notes.push(format!(
            "the volume claims {volume_bytes} bytes but its device holds {dev_size}: \
             it is truncated"
        ));
    }
    Ok(Geometry {
        fat_type,
        cluster_size: spc * sector_size,
        fat_offset: (reserved + active * fat_sectors) * sector_size,
        fat_used,
        root_offset: (reserved + fats * fat_sectors) * sector_size,
        root_entries: if fat_type == FatType::Fat32 {
            0
        } else {
            root_entries
        },
        data_offset: meta * sector_size,
        clusters,
        root_cluster,
        bpb_label,
        notes,
    })
}
