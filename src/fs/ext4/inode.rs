//! Inodes: the fixed 128-byte ext2 part, the "extra" part after it (nanosecond and
//! post-2038 timestamps), and the fields assembled from their high halves (uid, gid,
//! size, block count, xattr block).

use super::superblock::{Superblock, INCOMPAT_LARGEDIR, RO_COMPAT_HUGE_FILE};
use crate::fs::{FileType, Le, Time};
use crate::{Error, Result};

/// `i_flags` bits this reader acts on.
pub const FL_ENCRYPT: u32 = 0x800;
pub const FL_HUGE_FILE: u32 = 0x4_0000;
pub const FL_EXTENTS: u32 = 0x8_0000;
pub const FL_INLINE_DATA: u32 = 0x1000_0000;

/// Bytes of `i_block`: 15 block pointers, or the extent tree root, or inline data, or a
/// fast symlink's target.
pub const I_BLOCK_LEN: usize = 60;

/// One parsed inode; `raw` keeps all `s_inode_size` bytes for the in-inode xattrs.
#[derive(Clone, Debug)]
pub struct Inode {
    pub ino: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    /// Blocks counted in 512-byte units (huge_file scaling applied).
    pub blocks_512: u64,
    pub flags: u32,
    pub file_acl: u64,
    pub atime: Time,
    pub ctime: Time,
    pub mtime: Time,
    pub raw: Vec<u8>,
    /// Where the in-inode xattr area starts (128 + `i_extra_isize`), if there is one.
    pub xattr_start: Option<usize>,
}

impl Inode {
    pub fn parse(ino: u64, raw: Vec<u8>, sb: &Superblock) -> Result<Inode> {
        let what = format!("ext4: inode {ino}");
        let le = Le::new(&raw, &what);
        let mode = le.u16(0x0)?;
        let lo_size = u64::from(le.u32(0x4)?);
        let hi_size = u64::from(le.u32(0x6C)?);
        let is_reg = mode & 0xF000 == 0x8000;
        let size = if is_reg || sb.has_incompat(INCOMPAT_LARGEDIR) {
            lo_size | (hi_size << 32)
        } else {
            lo_size
        };
        let flags = le.u32(0x20)?;
        let mut blocks_512 = u64::from(le.u32(0x1C)?);
        if sb.has_ro_compat(RO_COMPAT_HUGE_FILE) {
            blocks_512 |= u64::from(le.u16(0x74)?) << 32;
            if flags & FL_HUGE_FILE != 0 {
                blocks_512 = blocks_512.saturating_mul(sb.block_size / 512);
            }
        }
        // i_extra_isize: how much of the inode past 128 bytes holds fields; the rest holds
        // xattrs. A value that does not fit is treated as no extra fields at all.
        let extra = if raw.len() > 128 {
            let e = usize::from(le.u16(0x80)?);
            if e % 4 == 0 && 128 + e <= raw.len() {
                e
            } else {
                0
            }
        } else {
            0
        };
        let xattr_start = (raw.len() > 128 && 128 + extra + 4 <= raw.len()).then_some(128 + extra);
        // A field of the extra part exists if it lies inside 128 + i_extra_isize.
        let has = |off: usize| off + 4 <= 128 + extra;
        let time = |base: usize, extra_off: usize| -> Result<Time> {
            let sec = i64::from(le.u32(base)? as i32);
            if has(extra_off) {
                let x = le.u32(extra_off)?;
                Ok(Time {
                    sec: sec + (i64::from(x & 3) << 32),
                    nsec: (x >> 2).min(999_999_999),
                })
            } else {
                Ok(Time { sec, nsec: 0 })
            }
        };
        let inode = Inode {
            ino,
            mode,
            uid: u32::from(le.u16(0x2)?) | (u32::from(le.u16(0x78)?) << 16),
            gid: u32::from(le.u16(0x18)?) | (u32::from(le.u16(0x7A)?) << 16),
            size,
            links: le.u16(0x1A)?,
            blocks_512,
            flags,
            file_acl: u64::from(le.u32(0x68)?) | (u64::from(le.u16(0x76)?) << 32),
            atime: time(0x8, 0x8C)?,
            ctime: time(0xC, 0x84)?,
            mtime: time(0x10, 0x88)?,
            xattr_start,
            raw: Vec::new(),
        };
        Ok(Inode { raw, ..inode })
    }

    pub fn kind(&self) -> Result<FileType> {
        Ok(match self.mode & 0xF000 {
            0x1000 => FileType::Fifo,
            0x2000 => FileType::CharDev,
            0x4000 => FileType::Dir,
            0x6000 => FileType::BlockDev,
            0x8000 => FileType::File,
            0xA000 => FileType::Symlink,
            0xC000 => FileType::Socket,
            t => {
                return Err(Error::Guest(format!(
                    "ext4: inode {}: mode {:#o} has no valid file type (type bits {:#o}: unused or damaged inode)",
                    self.ino, self.mode, t
                )))
            }
        })
    }

    pub fn i_block(&self) -> &[u8] {
        self.raw.get(0x28..0x28 + I_BLOCK_LEN).unwrap_or(&[])
    }

    pub fn has_flag(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// Device numbers of a device node: the old 8:8 encoding in `i_block[0]`, or the new
    /// 12:20 one in `i_block[1]` when the first word is zero.
    pub fn rdev(&self) -> (u32, u32) {
        let le = Le::new(self.i_block(), "ext4: device inode");
        let w0 = le.u32(0).unwrap_or(0);
        if w0 != 0 {
            ((w0 >> 8) & 0xff, w0 & 0xff)
        } else {
            let d = le.u32(4).unwrap_or(0);
            ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00))
        }
    }

    /// True for a symlink whose target lies in `i_block` itself: no data blocks other than
    /// an xattr block (the kernel's rule), and not inline data.
    pub fn is_fast_symlink(&self, sb: &Superblock) -> bool {
        if self.has_flag(FL_INLINE_DATA) {
            return false;
        }
        let ea = if self.file_acl != 0 {
            sb.block_size * sb.cluster_ratio / 512
        } else {
            0
        };
        self.blocks_512.saturating_sub(ea) == 0
    }
}
