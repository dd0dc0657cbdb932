//! Directories: blocks of variable-length entries (inode, record length, name length, file
//! type, name), read in logical order.
//!
//! Hashed (dir_index/htree) directories keep the same leaf blocks; their interior blocks
//! (the root in block 0 after "." and "..", and index nodes) look like one empty entry
//! covering the block, so a linear read lists every name exactly once. With metadata_csum
//! each leaf ends with a 12-byte empty entry holding the checksum. Without the filetype
//! feature the type byte is the high half of a 16-bit name length and the type comes
//! from the inode. Inline directories (inline_data) keep the parent's inode number in the
//! first 4 bytes of `i_block`, entries in the other 56, and more entries in `system.data`.
//!
//! Every record is checked before use: at least 8 bytes plus its name, a multiple of 4,
//! inside its block, and naming an inode that can exist.

use super::inode::{Inode, FL_INLINE_DATA};
use super::superblock::{INCOMPAT_FILETYPE, INCOMPAT_INLINE_DATA};
use super::xattr::{self, INDEX_SYSTEM};
use super::Ext4;
use crate::fs::{read_vec, FileType, Le};
use crate::{Error, Result};

/// Names one directory may hold: 4 Mi entries.
const MAX_ENTRIES: usize = 1 << 22;
/// Directory bytes read per call: 1 GiB (about 30 million short names).
const MAX_DIR_BYTES: u64 = 1 << 30;

/// One live entry as stored.
pub struct Raw {
    pub ino: u64,
    /// The dirent's type code (1..=7), or 0 if unknown (no filetype feature).
    pub ftype: u8,
    pub name: Vec<u8>,
}

/// Type code of a dirent.
pub fn kind_of(code: u8) -> Option<FileType> {
    Some(match code {
        1 => FileType::File,
        2 => FileType::Dir,
        3 => FileType::CharDev,
        4 => FileType::BlockDev,
        5 => FileType::Fifo,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => return None,
    })
}

impl Ext4 {
    /// Calls `f` with each live entry of directory `dir` except "." and "..", in on-disk
    /// order, until it returns false.
    pub(super) fn each_entry(
        &self,
        dir: &Inode,
        f: &mut dyn FnMut(Raw) -> Result<bool>,
    ) -> Result<()> {
        let mut count = 0usize;
        let mut visit = |r: Raw| -> Result<bool> {
            count += 1;
            if count > MAX_ENTRIES {
                return Err(Error::Guest(format!(
                    "ext4: directory {}: more than {MAX_ENTRIES} entries",
                    dir.ino
                )));
            }
            f(r)
        };
        if dir.has_flag(FL_INLINE_DATA) {
            if !self.sb.has_incompat(INCOMPAT_INLINE_DATA) {
                return Err(Error::Guest(format!(
                    "ext4: directory {}: inline data flag without the inline_data feature",
                    dir.ino
                )));
            }
            let ib = dir.i_block();
            let what = format!("ext4: inline directory {}", dir.ino);
            if !self.parse_block(ib.get(4..).unwrap_or(&[]), false, &what, &mut visit)? {
                return Ok(());
            }
            if let Some(more) = xattr::find(self, dir, INDEX_SYSTEM, b"data")? {
                self.parse_block(&more, false, &what, &mut visit)?;
            }
            return Ok(());
        }
        let bs = self.sb.block_size;
        let nblocks = dir.size.div_ceil(bs);
        let mut read = 0u64;
        for run in self.runs(dir, 0..nblocks)? {
            if !run.init {
                continue;
            }
            for i in 0..run.len {
                read += bs;
                if read > MAX_DIR_BYTES {
                    return Err(Error::Guest(format!(
                        "ext4: directory {}: larger than {MAX_DIR_BYTES} bytes",
                        dir.ino
                    )));
                }
                let what = format!("ext4: directory {} block {}", dir.ino, run.lblk + i);
                let at = (run.pblk + i) * bs;
                let block = read_vec(self.dev.as_ref(), at, bs, 1 << 16, &what)?;
                if !self.parse_block(&block, true, &what, &mut visit)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Parses the entries of one block (or inline area). `whole_block` says the record
    /// lengths use the 64 KiB-block encoding. Returns false if `f` asked to stop.
    pub(super) fn parse_block(
        &self,
        b: &[u8],
        whole_block: bool,
        what: &str,
        f: &mut dyn FnMut(Raw) -> Result<bool>,
    ) -> Result<bool> {
        let le = Le::new(b, what);
        let filetype = self.sb.has_incompat(INCOMPAT_FILETYPE);
        let max_ino = self.sb.max_ino();
        let mut at = 0usize;
        while at < b.len() {
            let ino = u64::from(le.u32(at)?);
            let raw_rec = le.u16(at + 4)?;
            let rec = if whole_block && b.len() >= 65536 && (raw_rec == 0 || raw_rec == 65535) {
                b.len()
            } else if whole_block && b.len() >= 65536 {
                usize::from(raw_rec & 0xFFFC) | (usize::from(raw_rec & 3) << 16)
            } else {
                usize::from(raw_rec)
            };
            let name_len = usize::from(le.u8(at + 6)?);
            let code = le.u8(at + 7)?;
            let bad = if rec < 8 || rec % 4 != 0 {
                Some(format!("record length {rec}"))
            } else if at + rec > b.len() {
                Some(format!("record of {rec} bytes runs past the end"))
            } else if 8 + name_len > rec {
                Some(format!(
                    "name of {name_len} bytes does not fit its {rec}-byte record"
                ))
            } else if ino > max_ino {
                Some(format!("inode {ino} is out of range"))
            } else {
                None
            };
            if let Some(why) = bad {
                return Err(Error::Guest(format!("{what}: entry at byte {at}: {why}")));
            }
            if ino != 0 {
                let name = le.bytes(at + 8, name_len)?;
                if name != b"." && name != b".." && !name.is_empty() {
                    let ftype = if filetype { code & 0x0F } else { 0 };
                    let go = f(Raw {
                        ino,
                        ftype,
                        name: name.to_vec(),
                    })?;
                    if !go {
                        return Ok(false);
                    }
                }
            }
            at += rec;
        }
        Ok(true)
    }
}
