//! Readers of what is inside a guest disk: partition tables, LVM2 volume groups, and the
//! filesystems (ext2/3/4, NTFS, FAT12/16/32, XFS), all over [`BlockRead`].
//!
//! Every byte they read comes from a backup of a guest that may be hostile, so each reader
//! follows the same rules: no panic on any input, no loop without a bound (directory and
//! extent trees have depth and count limits, cycles are detected), and no allocation sized
//! by an on-disk number without a cap. Damage is an [`Error::Guest`] naming the structure;
//! a feature the reader does not implement is an [`Error::Unsupported`] naming it.
//! Crash-consistent images (a dirty journal or log) are read as they lie on disk, the way
//! `mount -o ro,noload` shows them, with a warning from [`Filesystem::warnings`].
//!
//! Why cairn's own readers and not crates: the readers must be `Send + Sync` over a
//! random-access view (FUSE and NBD serve many threads), must expose each file's block map
//! and the free-space map (filesystem-aware chunking and skipping free blocks build on
//! them), and must share one discipline for hostile input. The crates we looked at read
//! through `Read + Seek` (or need `Write`), keep `Rc` inside, or replay journals.

pub mod ext4;
pub mod fat;
pub mod lvm;
pub mod ntfs;
pub mod partition;
pub mod volume;
pub mod xfs;

#[cfg(test)]
pub mod testutil;

use crate::blockdev::BlockRead;
use crate::{Error, Result};
use std::ops::Range;
use std::sync::Arc;

/// An inode number (or the reader's equivalent: an MFT record number, a FAT directory
/// entry's position).
pub type Ino = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileType {
    /// The letter `ls -l` shows.
    pub fn letter(self) -> char {
        match self {
            FileType::File => '-',
            FileType::Dir => 'd',
            FileType::Symlink => 'l',
            FileType::CharDev => 'c',
            FileType::BlockDev => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
        }
    }
}

/// Seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// What `stat` says of a file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    pub ino: Ino,
    pub kind: FileType,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`). Filesystems without
    /// Unix modes (FAT, NTFS) give 0o755 for directories and 0o644 for files (0o444 if
    /// read-only).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of content (for a symlink, of its target).
    pub size: u64,
    pub nlink: u32,
    pub mtime: Time,
    pub atime: Time,
    pub ctime: Time,
    /// Device numbers (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
    /// A textual owner where the filesystem has one instead of a uid (NTFS SID), if cheap.
    pub owner: Option<String>,
}

/// One name in a directory ("." and ".." are never listed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The name's bytes as stored (NTFS and FAT long names converted from UTF-16 to UTF-8).
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileType,
}

/// One piece of a file's content: `len` bytes at `file_offset`, stored at `disk_offset` of
/// the volume, or not stored at all (a hole, an unwritten extent, data kept inside the
/// metadata such as NTFS resident data or ext4 inline data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub file_offset: u64,
    pub len: u64,
    pub disk_offset: Option<u64>,
    /// False for a hole or unwritten extent: reads as zeros.
    pub data: bool,
}

/// A named data stream besides the main one (NTFS alternate data streams).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stream {
    pub name: String,
    pub size: u64,
}

/// A read-only filesystem. Methods take `&self` and may run on many threads at once.
pub trait Filesystem: Send + Sync {
    /// "ext4", "ntfs", "vfat", "xfs", …
    fn kind(&self) -> &'static str;
    fn label(&self) -> Option<String>;
    /// Things the reader noticed and read around (a dirty journal, an unclean unmount).
    fn warnings(&self) -> Vec<String>;
    fn root(&self) -> Ino;
    fn stat(&self, ino: Ino) -> Result<Meta>;
    /// The names in directory `ino`, in on-disk order, without "." and "..".
    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>>;
    /// Reads file content at `offset`; returns the bytes read, fewer than `buf.len()` only
    /// at the end of the file. Holes read as zeros.
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize>;
    fn read_link(&self, ino: Ino) -> Result<Vec<u8>>;
    /// The file's content as pieces in file order, covering `0..size` (the last piece may
    /// run past `size` up to a block boundary).
    fn map(&self, ino: Ino) -> Result<Vec<Mapping>>;
    /// Alternate data streams of `ino`.
    fn streams(&self, _ino: Ino) -> Result<Vec<Stream>> {
        Ok(Vec::new())
    }
    /// The entry called `name` in directory `dir`. Readers with indexed directories may
    /// answer faster than this scan.
    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        Ok(self.read_dir(dir)?.into_iter().find(|e| e.name == name))
    }
}

/// Byte ranges of `ino` that hold data, merged: what a sparse restore writes.
pub fn data_ranges(fs: &dyn Filesystem, ino: Ino, size: u64) -> Result<Vec<Range<u64>>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for m in fs.map(ino)? {
        if !m.data || m.file_offset >= size {
            continue;
        }
        let r = m.file_offset..(m.file_offset.saturating_add(m.len)).min(size);
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// Little-endian field readers that never panic: a field outside `b` reads as an error.
pub struct Le<'a> {
    pub b: &'a [u8],
    pub what: &'a str,
}

impl<'a> Le<'a> {
    pub fn new(b: &'a [u8], what: &'a str) -> Le<'a> {
        Le { b, what }
    }

    pub fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8]> {
        at.checked_add(n)
            .and_then(|end| self.b.get(at..end))
            .ok_or_else(|| {
                Error::Guest(format!(
                    "{}: field at byte {at} (+{n}) lies outside its {}-byte structure",
                    self.what,
                    self.b.len()
                ))
            })
    }

    pub fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }

    pub fn u16(&self, at: usize) -> Result<u16> {
        let s = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    pub fn u32(&self, at: usize) -> Result<u32> {
        let s = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn u64(&self, at: usize) -> Result<u64> {
        let s = self.bytes(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Reads `len` bytes at `offset` of `dev` into a new buffer, refusing lengths over `cap`
/// (an on-disk size is never trusted to size an allocation).
pub fn read_vec(
    dev: &dyn BlockRead,
    offset: u64,
    len: u64,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>> {
    if len > cap {
        return Err(Error::Guest(format!(
            "{what}: {len} bytes is more than the {cap} this reader accepts (damaged?)"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    dev.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// A shared handle on a view, as readers keep it.
pub type Dev = Arc<dyn BlockRead>;
