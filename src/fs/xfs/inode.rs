//! Inodes: the core (`xfs_dinode`, v1/v2 on version 4 filesystems, v3 with the 176-byte
//! core on version 5) and the two forks that share the literal area after it. The data
//! fork holds, by `di_format`: a device number (`DEV`), the bytes themselves (`LOCAL`:
//! short-form directories, short symlink targets), an array of packed extent records
//! (`EXTENTS`), or the root of a bmap btree (`BTREE`). The attribute fork starts
//! `di_forkoff * 8` bytes into the literal area (0: no attribute fork) and is not read.

use super::be::{guest, Be};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::fs::{FileType, Meta, Time};
use crate::Result;

const INODE_MAGIC: u16 = 0x494e; // "IN"

pub(super) const FMT_DEV: u8 = 0;
pub(super) const FMT_LOCAL: u8 = 1;
pub(super) const FMT_EXTENTS: u8 = 2;
pub(super) const FMT_BTREE: u8 = 3;

/// `di_flags`: the data lives on the realtime device.
const DIFLAG_REALTIME: u16 = 0x1;
/// `di_flags2` bits.
const DIFLAG2_BIGTIME: u64 = 0x8;
const DIFLAG2_NREXT64: u64 = 0x10;

/// Seconds between the bigtime epoch (the smallest 32-bit time, 1901-12-13) and 1970.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// One parsed inode: its core fields and the raw data fork.
pub(super) struct Inode {
    pub ino: u64,
    pub mode: u16,
    pub format: u8,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Extents in the data fork (as the core counts them; checked against the fork).
    pub nextents: u64,
    pub flags: u16,
    /// The data fork's bytes (the literal area up to the attribute fork).
    pub fork: Vec<u8>,
}

fn time(raw: u64, bigtime: bool) -> Time {
    if bigtime {
        let ns = 1_000_000_000u64;
        Time {
            sec: (raw / ns) as i64 - BIGTIME_EPOCH_OFFSET,
            nsec: (raw % ns) as u32,
        }
    } else {
        Time {
            sec: (raw >> 32) as u32 as i32 as i64,
            nsec: (raw as u32).min(999_999_999),
        }
    }
}

impl Inode {
    /// Reads and checks inode `ino`.
    pub fn read(dev: &dyn BlockRead, sb: &Superblock, ino: u64) -> Result<Inode> {
        let at = sb.inode_offset(ino)?;
        let mut raw = vec![0u8; sb.inodesize as usize];
        dev.read_at(at, &mut raw)?;
        Inode::parse(sb, ino, &raw)
    }

    pub fn parse(sb: &Superblock, ino: u64, raw: &[u8]) -> Result<Inode> {
        let what = format!("XFS: inode {ino}");
        let r = Be::new(raw, &what);
        if r.u16(0)? != INODE_MAGIC {
            return Err(guest(format!("inode {ino}: no IN magic (not an inode)")));
        }
        let mode = r.u16(2)?;
        let version = r.u8(4)?;
        let format = r.u8(5)?;
        let want_v3 = sb.version == 5;
        if (want_v3 && version != 3) || (!want_v3 && !(1..=2).contains(&version)) {
            return Err(guest(format!(
                "inode {ino}: version {version} on a version {} filesystem",
                sb.version
            )));
        }
        if mode == 0 {
            return Err(guest(format!("inode {ino} is free (mode 0)")));
        }
        let nlink = if version == 1 {
            r.u16(6)? as u32
        } else {
            r.u32(16)?
        };
        let (flags2, core) = if version == 3 {
            let stored = r.u64(152)?;
            if stored != ino {
                return Err(guest(format!(
                    "inode {ino}: the inode says it is number {stored} (misplaced)"
                )));
            }
            (r.u64(120)?, 176usize)
        } else {
            (0, 100usize)
        };
        let bigtime = flags2 & DIFLAG2_BIGTIME != 0;
        let nextents = if flags2 & DIFLAG2_NREXT64 != 0 {
            r.u64(24)?
        } else {
            r.u32(76)? as u64
        };
        let forkoff = r.u8(82)? as usize * 8;
        let literal = raw.len().saturating_sub(core);
        let fork_len = if forkoff == 0 { literal } else { forkoff };
        if fork_len > literal {
            return Err(guest(format!(
                "inode {ino}: attribute fork offset {forkoff} lies past the {literal}-byte literal area"
            )));
        }
        Ok(Inode {
            ino,
            mode,
            format,
            nlink,
            uid: r.u32(8)?,
            gid: r.u32(12)?,
            atime: time(r.u64(32)?, bigtime),
            mtime: time(r.u64(40)?, bigtime),
            ctime: time(r.u64(48)?, bigtime),
            size: r.u64(56)?,
            nextents,
            flags: r.u16(90)?,
            fork: r.bytes(core, fork_len)?.to_vec(),
        })
    }

    pub fn kind(&self) -> Result<FileType> {
        Ok(match self.mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Dir,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDev,
            0o060000 => FileType::BlockDev,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            t => {
                return Err(guest(format!(
                    "inode {}: unknown file type {t:#o} in mode",
                    self.ino
                )))
            }
        })
    }

    /// Its data lives on the realtime device, which this reader does not read.
    pub fn realtime(&self) -> bool {
        self.flags & DIFLAG_REALTIME != 0
    }

    /// Device numbers (major, minor) of a device node: a 32-bit number in the data fork
    /// split 14/18 bits, as Linux stores `dev_t` in XFS.
    pub fn rdev(&self) -> Result<Option<(u32, u32)>> {
        match self.kind()? {
            FileType::CharDev | FileType::BlockDev if self.format == FMT_DEV => {
                let d = Be::new(&self.fork, "XFS: device inode").u32(0)?;
                Ok(Some((d >> 18, d & 0x3ffff)))
            }
            _ => Ok(None),
        }
    }

    pub fn meta(&self) -> Result<Meta> {
        Ok(Meta {
            ino: self.ino,
            kind: self.kind()?,
            mode: (self.mode & 0o7777) as u32,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            mtime: self.mtime,
            atime: self.atime,
            ctime: self.ctime,
            rdev: self.rdev()?,
            owner: None,
        })
    }

    /// The inline bytes of a `LOCAL` fork: `di_size` of them.
    pub fn local_data(&self) -> Result<&[u8]> {
        usize::try_from(self.size)
            .ok()
            .and_then(|n| self.fork.get(..n))
            .ok_or_else(|| {
                guest(format!(
                    "inode {}: {} bytes of inline data do not fit its {}-byte fork",
                    self.ino,
                    self.size,
                    self.fork.len()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        // Legacy: signed seconds, nanoseconds.
        let t = time(((-5i32 as u32 as u64) << 32) | 7, false);
        assert_eq!((t.sec, t.nsec), (-5, 7));
        // Bigtime: nanoseconds since 1901-12-13T20:45:52Z.
        let t = time(((1u64 << 31) + 1_700_000_000) * 1_000_000_000 + 42, true);
        assert_eq!((t.sec, t.nsec), (1_700_000_000, 42));
        assert_eq!(time(0, true).sec, -(1 << 31));
    }
}
