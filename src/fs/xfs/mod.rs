//! A read-only XFS reader: version 5 filesystems (CRCs, the default since xfsprogs 3.2.3
//! and on RHEL 7+) and version 4 (no CRCs, version 2 directories).
//!
//! Supported:
//! - Geometry from the primary superblock: block, sector, inode and directory block sizes,
//!   allocation groups; features `ftype`, `crc`, `finobt`, sparse inodes, `bigtime`,
//!   `nrext64`, `meta_uuid`, `reflink` (shared extents are plain extents here), `rmapbt`,
//!   `inobtcount`, exchange-range, parent pointers. The label is `sb_fname`.
//! - Inodes located from their numbers (AG, block, index; each part range-checked), v3
//!   cores (v5: self-numbered, checked) and v1/v2 cores (v4): type, mode with
//!   setuid/setgid/sticky, owner, links, size, times (legacy and bigtime), device numbers.
//! - Data forks in local, extents and btree formats (`bmap.rs`); unwritten extents read as
//!   zeros and map with `data: false`.
//! - Directories in every form: short-form, block, leaf, node, and btree-format forks
//!   (`dir.rs`); names are bytes; file types from `ftype` or, without it, from the inode.
//! - Symlinks inline and remote (with `XSLM` headers on v5, or without them as
//!   `mkfs.xfs -p` of xfsprogs 6.1 writes them); hard links; device nodes, FIFOs, sockets.
//! - Lookups through the directories' hash index (`lookup.rs`).
//! - [`Xfs::used_blocks`]: the space in use, from the free-space btrees and free lists
//!   (`space.rs`).
//! - Log state (`log.rs`): a log that was not cleanly unmounted gives a warning; the files
//!   are shown as they lie on disk, without replaying it.
//!
//! Refused: files on the realtime device (`Error::Unsupported`, "XFS realtime device"),
//! incompatible feature bits this reader does not know (named; `metadir` and `zoned` by
//! name), superblock versions before 4 and version 1 directories; files of more than
//! 2 Mi extents and directories of more than 4 Mi names (memory caps).
//!
//! Not done: CRCs are not verified (a hostile guest can forge them anyway; structures are
//! checked by magic, owner, level and bounds instead), extended attributes are not read,
//! and the log is not replayed (nor are torn writes near its head looked for; see `log.rs`).

mod be;
mod bmap;
mod dir;
mod file;
mod inode;
mod log;
mod lookup;
mod sb;
mod space;
#[cfg(test)]
mod tests;

use self::bmap::Extent;
use self::inode::{Inode, FMT_BTREE, FMT_EXTENTS};
use crate::blockdev::BlockRead;
use crate::fs::{Dev, DirEntry, FileType, Filesystem, Ino, Mapping, Meta};
use crate::{Error, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

pub use self::sb::{Features, Superblock};

/// The warning for a log that was not cleanly unmounted.
pub const DIRTY_LOG_WARNING: &str = "XFS: the log is dirty (crash-consistent image); files are \
shown as on disk, without log recovery, as `mount -o ro,norecovery` would";

/// Btree-format extent lists kept between calls (reading a fragmented file piece by piece
/// would otherwise walk its btree for every piece): at most this many files…
const CACHE_FILES: usize = 64;
/// …and this many extents in all.
const CACHE_EXTENTS: usize = 1 << 20;

/// True if "XFSB" is at byte 0.
pub fn probe(dev: &dyn BlockRead) -> bool {
    let mut m = [0u8; 4];
    dev.size() >= 512 && dev.read_at(0, &mut m).is_ok() && m == *b"XFSB"
}

pub fn open(dev: Dev) -> Result<Arc<dyn Filesystem>> {
    Ok(Arc::new(Xfs::new(dev)?))
}

/// An open XFS filesystem.
pub struct Xfs {
    dev: Dev,
    sb: Superblock,
    warnings: Vec<String>,
    cache: Mutex<HashMap<u64, Arc<Vec<Extent>>>>,
}

impl Xfs {
    pub fn new(dev: Dev) -> Result<Xfs> {
        let mut head = [0u8; 512];
        if dev.size() < 512 {
            return Err(self::be::guest("volume smaller than a superblock"));
        }
        dev.read_at(0, &mut head)?;
        let sb = Superblock::parse(&head)?;
        let mut warnings = Vec::new();
        let fs_bytes = sb.dblocks << sb.blocklog;
        if dev.size() < fs_bytes {
            warnings.push(format!(
                "XFS: the volume is {} bytes, shorter than the filesystem's {fs_bytes}; \
                 files past its end cannot be read",
                dev.size()
            ));
        }
        if sb.features.needsrepair {
            warnings.push("XFS: the filesystem is flagged as needing xfs_repair".into());
        }
        match log::state(dev.as_ref(), &sb) {
            log::LogState::Clean => {}
            log::LogState::Dirty => warnings.push(DIRTY_LOG_WARNING.into()),
            log::LogState::Unknown(why) => warnings.push(format!(
                "XFS: cannot tell whether the log is clean ({why}); files are shown as on \
                 disk, without log recovery"
            )),
        }
        Ok(Xfs {
            dev,
            sb,
            warnings,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The superblock's geometry and features.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Byte ranges of the volume in use (everything the free-space btrees do not list as
    /// free), sorted and merged.
    pub fn used_blocks(&self) -> Result<Vec<Range<u64>>> {
        space::used(self.dev.as_ref(), &self.sb)
    }

    fn inode(&self, ino: Ino) -> Result<Inode> {
        Inode::read(self.dev.as_ref(), &self.sb, ino)
    }

    /// The extents of `inode`'s data fork (empty for other formats).
    fn extents(&self, inode: &Inode) -> Result<Arc<Vec<Extent>>> {
        match inode.format {
            FMT_EXTENTS => Ok(Arc::new(bmap::from_fork(
                &self.sb,
                inode.ino,
                &inode.fork,
                inode.nextents,
            )?)),
            FMT_BTREE => {
                let cache = |c: &mut HashMap<u64, Arc<Vec<Extent>>>| c.get(&inode.ino).cloned();
                if let Some(hit) = self.cache.lock().ok().as_deref_mut().and_then(cache) {
                    return Ok(hit);
                }
                let exts = Arc::new(bmap::from_btree(
                    self.dev.as_ref(),
                    &self.sb,
                    inode.ino,
                    &inode.fork,
                )?);
                if let Ok(mut c) = self.cache.lock() {
                    let total: usize = c.values().map(|v| v.len()).sum();
                    if c.len() >= CACHE_FILES || total + exts.len() > CACHE_EXTENTS {
                        c.clear();
                    }
                    if exts.len() <= CACHE_EXTENTS {
                        c.insert(inode.ino, exts.clone());
                    }
                }
                Ok(exts)
            }
            _ => Ok(Arc::new(Vec::new())),
        }
    }

    /// The inode of regular file `ino`, refusing realtime files.
    fn data_inode(&self, ino: Ino) -> Result<Inode> {
        let inode = self.inode(ino)?;
        if inode.realtime() && inode.kind()? == FileType::File {
            return Err(file::realtime(ino));
        }
        Ok(inode)
    }
}

impl Xfs {
    /// A directory entry with its inode number checked and its type settled (from the
    /// entry's file type, or the inode where the filesystem has no `ftype`).
    fn entry(&self, dir: Ino, e: dir::RawEntry) -> Result<DirEntry> {
        self.sb.inode_offset(e.ino).map_err(|err| {
            self::be::guest(format!(
                "directory {dir}: entry {:?}: {err}",
                String::from_utf8_lossy(&e.name)
            ))
        })?;
        let kind = match ftype_kind(e.ftype) {
            Some(k) => k,
            None => self.inode(e.ino)?.kind()?,
        };
        Ok(DirEntry {
            name: e.name,
            ino: e.ino,
            kind,
        })
    }
}

fn ftype_kind(ftype: u8) -> Option<FileType> {
    Some(match ftype {
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

impl Filesystem for Xfs {
    fn kind(&self) -> &'static str {
        "xfs"
    }

    fn label(&self) -> Option<String> {
        (!self.sb.label.is_empty()).then(|| String::from_utf8_lossy(&self.sb.label).into_owned())
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn root(&self) -> Ino {
        self.sb.rootino
    }

    fn stat(&self, ino: Ino) -> Result<Meta> {
        self.inode(ino)?.meta()
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let inode = self.inode(ino)?;
        if inode.kind()? != FileType::Dir {
            return Err(Error::Other(format!("XFS: inode {ino} is not a directory")));
        }
        let raw = dir::entries(self.dev.as_ref(), &self.sb, &inode, || self.extents(&inode))?;
        raw.into_iter().map(|e| self.entry(ino, e)).collect()
    }

    /// Uses the directory's hash index where it has one; scans it where it has none
    /// (short-form, case-insensitive) or where the index is damaged.
    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let inode = self.inode(dir)?;
        if inode.kind()? != FileType::Dir {
            return Err(Error::Other(format!("XFS: inode {dir} is not a directory")));
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Ok(None);
        }
        if matches!(inode.format, FMT_EXTENTS | FMT_BTREE) && !self.sb.features.ascii_ci {
            let exts = self.extents(&inode)?;
            match lookup::find(self.dev.as_ref(), &self.sb, dir, &exts, name) {
                Ok(found) => return found.map(|e| self.entry(dir, e)).transpose(),
                Err(Error::Guest(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.read_dir(dir)?.into_iter().find(|e| e.name == name))
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.data_inode(ino)?;
        if inode.kind()? != FileType::File {
            return Err(Error::Other(format!(
                "XFS: inode {ino} is not a regular file"
            )));
        }
        let exts = self.extents(&inode)?;
        file::read(self.dev.as_ref(), &self.sb, &inode, &exts, offset, buf)
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind()? != FileType::Symlink {
            return Err(Error::Other(format!("XFS: inode {ino} is not a symlink")));
        }
        file::read_link(self.dev.as_ref(), &self.sb, &inode, || self.extents(&inode))
    }

    fn map(&self, ino: Ino) -> Result<Vec<Mapping>> {
        let inode = self.data_inode(ino)?;
        let exts = self.extents(&inode)?;
        file::map(&self.sb, &inode, &exts)
    }
}
