//! The superblock: the 1024 bytes at byte 1024 of the volume that give the geometry (block
//! size, blocks and inodes per group, descriptor size) and the feature flags.
//!
//! Features come in three sets. COMPAT ones (a journal, dir_index, resize_inode) change
//! nothing for a reader that ignores them; RO_COMPAT ones (huge_file, metadata_csum,
//! bigalloc, extra_isize) only forbid *writing* by code that does not know them, so a
//! read-only reader may open the volume whatever they are; INCOMPAT ones change the
//! layout, so an unknown INCOMPAT bit refuses the volume, naming the bit.

use crate::fs::Le;
use crate::{Error, Result};

/// Offset of the superblock in the volume, whatever the block size.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// `s_magic`, at byte 0x38 of the superblock (byte 1080 of the volume).
pub const MAGIC: u16 = 0xEF53;

pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_RESIZE_INODE: u32 = 0x10;
pub const COMPAT_DIR_INDEX: u32 = 0x20;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;

pub const INCOMPAT_COMPRESSION: u32 = 0x1;
pub const INCOMPAT_FILETYPE: u32 = 0x2;
pub const INCOMPAT_RECOVER: u32 = 0x4;
pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub const INCOMPAT_META_BG: u32 = 0x10;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_MMP: u32 = 0x100;
pub const INCOMPAT_FLEX_BG: u32 = 0x200;
pub const INCOMPAT_EA_INODE: u32 = 0x400;
pub const INCOMPAT_DIRDATA: u32 = 0x1000;
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub const INCOMPAT_CASEFOLD: u32 = 0x20000;

/// Every INCOMPAT bit this reader knows how to read (compression and journal_dev are
/// known but refused by name).
const INCOMPAT_KNOWN: u32 = INCOMPAT_COMPRESSION
    | INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_JOURNAL_DEV
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub const RO_COMPAT_BIGALLOC: u32 = 0x200;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// `s_state` bits.
const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

/// Largest group count accepted: 4 Mi groups is 512 TiB at 4 KiB blocks, and keeps the
/// parsed descriptor table under 128 MiB.
pub const MAX_GROUPS: u64 = 1 << 22;

/// The fields of the superblock this reader uses, checked for consistency.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub block_size: u64,
    /// Blocks per allocation cluster (1 unless bigalloc).
    pub cluster_ratio: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u32,
    pub state: u16,
    pub inode_size: u32,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub volume_name: [u8; 16],
    pub reserved_gdt_blocks: u64,
    /// Bytes per group descriptor: 32, or `s_desc_size` with the 64bit feature.
    pub desc_size: u64,
    pub first_meta_bg: u64,
    /// The two groups holding backups with sparse_super2.
    pub backup_bgs: [u64; 2],
    pub group_count: u64,
    /// `s_hash_seed`, the seed of directory index hashes.
    pub hash_seed: [u32; 4],
    /// The index hashes treat name bytes as unsigned (`s_flags` 0x2).
    pub hash_unsigned: bool,
}

impl Superblock {
    /// Parses and checks the 1024 superblock bytes. Refuses volumes whose layout this reader
    /// cannot follow (unknown INCOMPAT bits, compression, an external journal device).
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        let le = Le::new(b, "ext4: superblock");
        if le.u16(0x38)? != MAGIC {
            return Err(Error::Guest(
                "ext4: superblock: no ext2/3/4 magic 0xEF53 at byte 1080".into(),
            ));
        }
        let rev_level = le.u32(0x4C)?;
        let dynamic = rev_level >= 1;
        let (compat, incompat, ro_compat) = if dynamic {
            (le.u32(0x5C)?, le.u32(0x60)?, le.u32(0x64)?)
        } else {
            (0, 0, 0)
        };
        check_incompat(incompat)?;

        let log_block = le.u32(0x18)?;
        if log_block > 6 {
            return Err(Error::Guest(format!(
                "ext4: superblock: block size 2^{} bytes is outside 1 KiB..64 KiB",
                u64::from(log_block) + 10
            )));
        }
        let block_size = 1024u64 << log_block;
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let cluster_ratio = if bigalloc {
            let log_cluster = le.u32(0x1C)?;
            if log_cluster < log_block || log_cluster > log_block + 16 {
                return Err(Error::Guest(format!(
                    "ext4: superblock: cluster size 2^{log_cluster} KiB does not fit block size {block_size}"
                )));
            }
            1u64 << (log_cluster - log_block)
        } else {
            1
        };

        let blocks_lo = u64::from(le.u32(0x4)?);
        let blocks_hi = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le.u32(0x150)?)
        } else {
            0
        };
        let blocks_count = blocks_lo | (blocks_hi << 32);
        if blocks_count.checked_mul(block_size).is_none() {
            return Err(Error::Guest(format!(
                "ext4: superblock: {blocks_count} blocks of {block_size} bytes overflow 2^64 bytes"
            )));
        }
        let first_data_block = u64::from(le.u32(0x14)?);
        if first_data_block >= blocks_count {
            return Err(Error::Guest(format!(
                "ext4: superblock: first data block {first_data_block} is past the {blocks_count} blocks of the volume"
            )));
        }

        let blocks_per_group = if bigalloc {
            u64::from(le.u32(0x24)?).saturating_mul(cluster_ratio)
        } else {
            u64::from(le.u32(0x20)?)
        };
        let bits = block_size * 8;
        if blocks_per_group == 0 || blocks_per_group > bits * cluster_ratio {
            return Err(Error::Guest(format!(
                "ext4: superblock: {blocks_per_group} blocks per group do not fit one {block_size}-byte bitmap"
            )));
        }
        let inodes_per_group = le.u32(0x28)?;
        if inodes_per_group == 0 || u64::from(inodes_per_group) > bits {
            return Err(Error::Guest(format!(
                "ext4: superblock: {inodes_per_group} inodes per group do not fit one {block_size}-byte bitmap"
            )));
        }
        let inode_size = if dynamic {
            u32::from(le.u16(0x58)?)
        } else {
            128
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || u64::from(inode_size) > block_size {
            return Err(Error::Guest(format!(
                "ext4: superblock: inode size {inode_size} is not a power of two from 128 to the block size"
            )));
        }

        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            let d = u64::from(le.u16(0xFE)?);
            if !(64..=1024).contains(&d) || !d.is_power_of_two() || d > block_size {
                return Err(Error::Guest(format!(
                    "ext4: superblock: group descriptor size {d} is not a power of two from 64 to 1024"
                )));
            }
            d
        } else {
            32
        };

        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if group_count > MAX_GROUPS {
            return Err(Error::Guest(format!(
                "ext4: superblock: {group_count} block groups are more than the {MAX_GROUPS} this reader accepts"
            )));
        }

        let mut volume_name = [0u8; 16];
        volume_name.copy_from_slice(le.bytes(0x78, 16)?);
        Ok(Superblock {
            inodes_count: le.u32(0x0)?,
            blocks_count,
            first_data_block,
            block_size,
            cluster_ratio,
            blocks_per_group,
            inodes_per_group,
            state: le.u16(0x3A)?,
            inode_size,
            compat,
            incompat,
            ro_compat,
            volume_name,
            reserved_gdt_blocks: if compat & COMPAT_RESIZE_INODE != 0 {
                u64::from(le.u16(0xCE)?)
            } else {
                0
            },
            desc_size,
            first_meta_bg: u64::from(le.u32(0x104)?),
            backup_bgs: [u64::from(le.u32(0x24C)?), u64::from(le.u32(0x250)?)],
            group_count,
            hash_seed: [le.u32(0xEC)?, le.u32(0xF0)?, le.u32(0xF4)?, le.u32(0xF8)?],
            hash_unsigned: le.u32(0x160)? & 0x2 != 0,
        })
    }

    pub fn has_incompat(&self, bit: u32) -> bool {
        self.incompat & bit != 0
    }

    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.ro_compat & bit != 0
    }

    pub fn has_compat(&self, bit: u32) -> bool {
        self.compat & bit != 0
    }

    /// The block holding the primary superblock: 1 with 1 KiB blocks, else 0.
    pub fn superblock_block(&self) -> u64 {
        if self.block_size == 1024 {
            1
        } else {
            0
        }
    }

    pub fn descs_per_block(&self) -> u64 {
        self.block_size / self.desc_size
    }

    /// Highest inode number that can exist.
    pub fn max_ino(&self) -> u64 {
        u64::from(self.inodes_count).min(
            self.group_count
                .saturating_mul(u64::from(self.inodes_per_group)),
        )
    }

    /// `mount`'s name for this volume: ext4 if any ext4-only feature is on, ext3 if it has
    /// a journal, else ext2 (what `blkid` says).
    pub fn kind(&self) -> &'static str {
        let ext4_incompat = INCOMPAT_EXTENTS
            | INCOMPAT_64BIT
            | INCOMPAT_FLEX_BG
            | INCOMPAT_MMP
            | INCOMPAT_EA_INODE
            | INCOMPAT_CSUM_SEED
            | INCOMPAT_LARGEDIR
            | INCOMPAT_INLINE_DATA
            | INCOMPAT_ENCRYPT
            | INCOMPAT_CASEFOLD
            | INCOMPAT_META_BG;
        let ext4_ro = RO_COMPAT_HUGE_FILE
            | RO_COMPAT_GDT_CSUM
            | 0x20 // dir_nlink
            | 0x40 // extra_isize
            | RO_COMPAT_BIGALLOC
            | RO_COMPAT_METADATA_CSUM;
        if self.incompat & ext4_incompat != 0 || self.ro_compat & ext4_ro != 0 {
            "ext4"
        } else if self.has_compat(COMPAT_HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// The volume label, if set.
    pub fn label(&self) -> Option<String> {
        let end = self
            .volume_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.volume_name.len());
        let name = self.volume_name.get(..end)?;
        (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
    }

    /// What the reader reads around: a journal that needs replaying, an unclean or
    /// errored state.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let journal = self.has_compat(COMPAT_HAS_JOURNAL);
        if self.has_incompat(INCOMPAT_RECOVER) || (journal && self.state & STATE_VALID == 0) {
            out.push(
                "ext4: the journal needs recovery (the image is crash-consistent); files are \
                 shown as on disk, without replaying the journal, as `mount -o ro,noload` would"
                    .to_string(),
            );
        } else if self.state & STATE_VALID == 0 {
            out.push(
                "ext4: the filesystem was not cleanly unmounted (it has no journal to replay); \
                 files are shown as on disk and may be inconsistent"
                    .to_string(),
            );
        }
        if self.state & STATE_ERROR != 0 {
            out.push(
                "ext4: the kernel recorded errors on this filesystem (it needs e2fsck); files \
                 are shown as on disk"
                    .to_string(),
            );
        }
        out
    }
}

/// Refuses INCOMPAT features that change the layout in ways this reader does not follow.
fn check_incompat(incompat: u32) -> Result<()> {
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let bits: Vec<String> = (0..32)
            .filter(|i| unknown & (1 << i) != 0)
            .map(|i| format!("0x{:x}", 1u32 << i))
            .collect();
        return Err(Error::Unsupported(format!(
            "ext4: unknown incompatible feature bit(s) {} are not supported",
            bits.join(", ")
        )));
    }
    if incompat & INCOMPAT_COMPRESSION != 0 {
        return Err(Error::Unsupported(
            "ext4: ext2 file compression (the compression feature) is not supported".into(),
        ));
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(Error::Unsupported(
            "ext4: this volume is an external journal device (journal_dev), which holds no files"
                .into(),
        ));
    }
    Ok(())
}
