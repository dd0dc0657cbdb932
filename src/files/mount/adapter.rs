//! The FUSE side: kernel requests turned into [`Tree`] calls, node ids from the [`Table`],
//! errors into errno values.
//!
//! Everything in a snapshot is immutable, so attributes, entries and page-cache contents
//! may be cached by the kernel for long. Writes never reach here: the mount is read-only
//! (the kernel answers EROFS), and `open` refuses write access modes as well in case it is
//! ever mounted otherwise.

use super::inodes::{Node, Table};
use super::tree::{Fault, Tree};
use crate::fs::{FileType, Meta, Time};
use crate::Error;
use fuser::{
    Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may keep attributes and names: nothing in a snapshot changes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// One entry of an open folder: name, node id, type.
type Listing = Arc<Vec<(Vec<u8>, u64, FileType)>>;

pub struct Mount {
    tree: Tree,
    table: Table,
    /// Open folders: their listing, made at `opendir` so that reading a big folder in many
    /// `readdir` calls lists it once.
    dirs: Mutex<HashMap<u64, Listing>>,
    /// Open files: their size, to clip reads without a `stat` each.
    files: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
}

fn system_time(t: Time) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let at = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    at.and_then(|a| a.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

fn kind(k: FileType) -> fuser::FileType {
    match k {
        FileType::File => fuser::FileType::RegularFile,
        FileType::Dir => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDev => fuser::FileType::CharDevice,
        FileType::BlockDev => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
    }
}

/// A device number as FUSE carries it (the kernel's `new_encode_dev`).
fn rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The attributes of node id `ino` from what the tree says of it; the guest's inode number
/// is never shown.
fn attr(ino: u64, m: &Meta) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size,
        blocks: m.size.div_ceil(512),
        atime: system_time(m.atime),
        mtime: system_time(m.mtime),
        ctime: system_time(m.ctime),
        crtime: system_time(m.mtime),
        kind: kind(m.kind),
        perm: (m.mode & 0o7777) as u16,
        // Damaged metadata may say 0, which the kernel takes for a deleted file.
        nlink: m.nlink.max(1),
        uid: m.uid,
        gid: m.gid,
        rdev: m.rdev.map_or(0, |(a, b)| rdev(a, b)),
        blksize: 4096,
        flags: 0,
    }
}

impl Mount {
    pub fn new(tree: Tree) -> Mount {
        Mount {
            tree,
            table: Table::new(),
            dirs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The errno for `f`; damage and refusals are logged (once each) with where they are.
    fn errno(&self, node: &Node, f: Fault) -> Errno {
        match f {
            Fault::NotFound => Errno::ENOENT,
            Fault::NotDir => Errno::ENOTDIR,
            Fault::NotLink => Errno::EINVAL,
            Fault::Failed(e) => {
                self.tree
                    .log
                    .once(format!("{}: {e}", self.tree.place(node)));
                match e {
                    Error::Unsupported(_) => Errno::EOPNOTSUPP,
                    _ => Errno::EIO,
                }
            }
        }
    }

    fn node(&self, ino: INodeNo) -> Result<(Node, u64), Errno> {
        self.table.get(ino.0).ok_or(Errno::ENOENT)
    }

    /// The listing of folder `ino`, with `.` and `..`.
    fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        let (node, parent) = self.table.get(ino).ok_or(Errno::ENOENT)?;
        let children = self
            .tree
            .children(&node)
            .map_err(|f| self.errno(&node, f))?;
        let mut out = Vec::with_capacity(children.len() + 2);
        out.push((b".".to_vec(), ino, FileType::Dir));
        out.push((b"..".to_vec(), parent, FileType::Dir));
        for c in children {
            out.push((c.name, self.table.listed(c.node, ino), c.kind));
        }
        Ok(Arc::new(out))
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }
}

impl fuser::Filesystem for Mount {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (dir, _) = match self.node(parent) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.tree.lookup(&dir, name.as_bytes()) {
            Ok((node, meta)) => {
                let ino = self.table.looked_up(node, parent.0);
                reply.entry(&TTL, &attr(ino, &meta), Generation(0));
            }
            Err(f) => reply.error(self.errno(&dir, f)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.table.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (node, _) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.tree.stat(&node) {
            Ok(meta) => reply.attr(&TTL, &attr(ino.0, &meta)),
            Err(f) => reply.error(self.errno(&node, f)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (node, _) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.tree.read_link(&node) {
            Ok(t) => reply.data(&t),
            Err(f) => reply.error(self.errno(&node, f)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let (node, _) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let meta = match self.tree.stat(&node) {
            Ok(m) => m,
            Err(f) => return reply.error(self.errno(&node, f)),
        };
        if meta.kind == FileType::Dir {
            return reply.error(Errno::EISDIR);
        }
        let fh = self.fh();
        crate::lock(&self.files).insert(fh, meta.size);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (node, _) = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let known = crate::lock(&self.files).get(&fh.0).copied();
        let len = match known {
            Some(l) => l,
            None => match self.tree.stat(&node) {
                Ok(m) => m.size,
                Err(f) => return reply.error(self.errno(&node, f)),
            },
        };
        match self.tree.read(&node, offset, size as usize, len) {
            Ok(data) => reply.data(&data),
            Err(f) => reply.error(self.errno(&node, f)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        crate::lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.listing(ino.0) {
            Ok(l) => {
                let fh = self.fh();
                crate::lock(&self.dirs).insert(fh, l);
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let open = crate::lock(&self.dirs).get(&fh.0).cloned();
        let list = match open {
            Some(l) => l,
            None => match self.listing(ino.0) {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            },
        };
        // The offset of an entry is its position plus one: the kernel asks for the entries
        // after the last one it got.
        for (i, (name, ino, k)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*ino),
                i as u64 + 1,
                kind(*k),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        crate::lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Size: every disk of every snapshot, none of it free; files: the ids in use.
        let blocks = self.tree.logical_size() / 4096;
        reply.statfs(blocks, 0, 0, self.table.len() as u64, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_devices_convert() {
        let t = system_time(Time {
            sec: -2,
            nsec: 500_000_000,
        });
        assert_eq!(
            UNIX_EPOCH.duration_since(t).ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            system_time(Time { sec: 5, nsec: 7 }),
            UNIX_EPOCH + Duration::new(5, 7)
        );
        assert_eq!(rdev(8, 1), 0x801);
        assert_eq!(rdev(1, 0x1234), 0x34 | (1 << 8) | (0x1200 << 12));
    }
}
