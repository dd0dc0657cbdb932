//! A read-only reader of ext2, ext3 and ext4 volumes.
//!
//! Supported: block sizes 1 KiB to 64 KiB; 32- and 64-byte group descriptors (64bit);
//! meta_bg, flex_bg, sparse_super and sparse_super2 layouts; bigalloc (bitmaps count
//! clusters); extent trees (depth ≤ 5, unwritten extents read as zeros and map as
//! `data: false`); ext2/ext3 indirect block maps (single, double, triple, holes); hashed
//! (dir_index) directories, listed linearly and searched by `lookup` through the index
//! (legacy, half-MD4 and TEA hashes, signed and unsigned), and largedir; inline_data
//! files, directories and symlinks; fast and slow symlinks; huge_file; extra_isize
//! nanosecond timestamps and the epoch bits (dates after 2038); 32-bit uids and gids;
//! device nodes, fifos and sockets; directories with and without the filetype feature;
//! metadata_csum and gdt_csum volumes (checksums are not verified, but no length or count
//! is trusted). Names are bytes as stored. `map()` gives each file's runs on the volume
//! with holes; `used_blocks()` gives the volume's used blocks from the bitmaps. `kind()`
//! says "ext2", "ext3" or "ext4" by the features, as `blkid` does.
//!
//! Refused, by name ([`Error::Unsupported`]): encrypted files and directories (encrypt
//! feature with an inode's ENCRYPT flag; only those inodes, the rest stays readable),
//! unknown INCOMPAT feature bits (named), ext2 compression, external journal devices.
//! A journal that needs recovery (needs_recovery, or a journalled volume not marked
//! clean) is not replayed: files are read as they lie on disk, as `mount -o ro,noload`
//! shows them, with a warning. Casefolded directories are listed as stored; `lookup`
//! compares names exactly.

mod blockmap;
mod data;
mod dir;
mod extents;
mod groups;
mod htree;
mod inode;
mod superblock;
mod xattr;

#[cfg(test)]
mod tests;

use self::inode::{Inode, FL_ENCRYPT};
use self::superblock::{Superblock, INCOMPAT_ENCRYPT, SUPERBLOCK_OFFSET};
use crate::blockdev::BlockRead;
use crate::fs::{read_vec, Dev, DirEntry, FileType, Filesystem, Ino, Mapping, Meta};
use crate::{Error, Result};
use std::ops::Range;
use std::sync::Arc;

/// Longest symlink target read: the kernel allows one block, at most 64 KiB.
const MAX_LINK: u64 = 1 << 16;

/// True if the ext2/3/4 superblock magic 0xEF53 is at byte 1080.
pub fn probe(dev: &dyn BlockRead) -> bool {
    let mut m = [0u8; 2];
    dev.read_at(SUPERBLOCK_OFFSET + 0x38, &mut m).is_ok()
        && u16::from_le_bytes(m) == superblock::MAGIC
}

/// Opens an ext2/3/4 volume as a [`Filesystem`].
pub fn open(dev: Dev) -> Result<Arc<dyn Filesystem>> {
    Ok(Arc::new(open_ext4(dev)?))
}

/// Opens an ext2/3/4 volume, keeping the concrete type (for [`Ext4::used_blocks`]).
pub fn open_ext4(dev: Dev) -> Result<Ext4> {
    let raw = read_vec(
        dev.as_ref(),
        SUPERBLOCK_OFFSET,
        1024,
        1024,
        "ext4: superblock",
    )?;
    let sb = Superblock::parse(&raw)?;
    let groups = groups::load(dev.as_ref(), &sb)?;
    let mut warnings = sb.warnings();
    let bytes = sb.blocks_count * sb.block_size;
    if bytes > dev.size() {
        warnings.push(format!(
            "ext4: the filesystem claims {bytes} bytes but the volume holds {}; files past \
             its end cannot be read",
            dev.size()
        ));
    }
    let fs = Ext4 {
        dev,
        sb,
        groups,
        warnings,
    };
    // The root must be a directory, or nothing below it can be read.
    let root = fs.inode(ROOT)?;
    if root.kind()? != FileType::Dir {
        return Err(Error::Guest(
            "ext4: inode 2 (the root) is not a directory".into(),
        ));
    }
    Ok(fs)
}

const ROOT: u64 = 2;

/// An open ext2/3/4 volume. Holds no caches: every call reads what it needs, so it is
/// `Send + Sync` without locks.
pub struct Ext4 {
    dev: Dev,
    sb: Superblock,
    groups: Vec<groups::Group>,
    warnings: Vec<String>,
}

impl Ext4 {
    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.sb.block_size
    }

    /// Blocks in the volume.
    pub fn blocks_count(&self) -> u64 {
        self.sb.blocks_count
    }

    /// The used blocks of the volume (block numbers, sorted, merged), from the block
    /// bitmaps plus every group's metadata; everything else is free. Multiply by
    /// [`Ext4::block_size`] for byte offsets.
    pub fn used_blocks(&self) -> Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        self.for_each_used_block_range(&mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Ext4::used_blocks`] one range at a time, without collecting them: a hostile
    /// bitmap of alternating bits would otherwise make the list as large as the volume.
    pub fn for_each_used_block_range(
        &self,
        f: &mut dyn FnMut(Range<u64>) -> Result<()>,
    ) -> Result<()> {
        groups::for_each_used(self.dev.as_ref(), &self.sb, &self.groups, f)
    }

    /// Reads and parses inode `ino`.
    fn inode(&self, ino: u64) -> Result<Inode> {
        let sb = &self.sb;
        if ino == 0 || ino > sb.max_ino() {
            return Err(Error::Guest(format!(
                "ext4: inode {ino} is out of range (1..={})",
                sb.max_ino()
            )));
        }
        let ipg = u64::from(sb.inodes_per_group);
        let g = (ino - 1) / ipg;
        let gd = self.groups.get(g as usize).ok_or_else(|| {
            Error::Guest(format!("ext4: inode {ino}: group {g} has no descriptor"))
        })?;
        let table_end = gd
            .inode_table
            .saturating_add(groups::inode_table_blocks(sb));
        if gd.inode_table == 0 || table_end > sb.blocks_count {
            return Err(Error::Guest(format!(
                "ext4: group {g}: inode table at block {} lies outside the filesystem",
                gd.inode_table
            )));
        }
        let at = gd.inode_table * sb.block_size + ((ino - 1) % ipg) * u64::from(sb.inode_size);
        let raw = read_vec(
            self.dev.as_ref(),
            at,
            u64::from(sb.inode_size),
            1 << 16,
            &format!("ext4: inode {ino}"),
        )?;
        Inode::parse(ino, raw, sb)
    }

    /// Refuses the content of an encrypted inode.
    fn readable(&self, inode: &Inode) -> Result<()> {
        if self.sb.has_incompat(INCOMPAT_ENCRYPT) && inode.has_flag(FL_ENCRYPT) {
            return Err(Error::Unsupported(format!(
                "ext4: inode {}: encrypted file (ext4 encryption, fscrypt) is not supported; \
                 cairn does not decrypt guest files",
                inode.ino
            )));
        }
        Ok(())
    }

    fn dir_inode(&self, ino: u64) -> Result<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind()? != FileType::Dir {
            return Err(Error::Guest(format!(
                "ext4: inode {ino} is not a directory"
            )));
        }
        self.readable(&inode)?;
        Ok(inode)
    }

    /// A dirent's type, from its type code or else from the inode.
    fn entry_kind(&self, r: &dir::Raw) -> Result<FileType> {
        match dir::kind_of(r.ftype) {
            Some(k) => Ok(k),
            None => self.inode(r.ino)?.kind(),
        }
    }
}

impl Filesystem for Ext4 {
    fn kind(&self) -> &'static str {
        self.sb.kind()
    }

    fn label(&self) -> Option<String> {
        self.sb.label()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn stat(&self, ino: Ino) -> Result<Meta> {
        let i = self.inode(ino)?;
        let kind = i.kind()?;
        Ok(Meta {
            ino,
            kind,
            mode: u32::from(i.mode) & 0o7777,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            nlink: u32::from(i.links),
            mtime: i.mtime,
            atime: i.atime,
            ctime: i.ctime,
            rdev: matches!(kind, FileType::CharDev | FileType::BlockDev).then(|| i.rdev()),
            owner: None,
        })
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let dir = self.dir_inode(ino)?;
        let mut out = Vec::new();
        self.each_entry(&dir, &mut |r| {
            let kind = self.entry_kind(&r)?;
            out.push(DirEntry {
                name: r.name,
                ino: r.ino,
                kind,
            });
            Ok(true)
        })?;
        Ok(out)
    }

    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let dir = self.dir_inode(dir)?;
        let mut found = None;
        match self.htree_find(&dir, name) {
            htree::Found::Entry(r) => found = Some(r),
            htree::Found::Missing => return Ok(None),
            htree::Found::Unusable => {}
        }
        if found.is_none() {
            self.each_entry(&dir, &mut |r| {
                if r.name == name {
                    found = Some(r);
                    return Ok(false);
                }
                Ok(true)
            })?;
        }
        match found {
            Some(r) => Ok(Some(DirEntry {
                kind: self.entry_kind(&r)?,
                name: r.name,
                ino: r.ino,
            })),
            None => Ok(None),
        }
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.inode(ino)?;
        match inode.kind()? {
            FileType::File | FileType::Dir | FileType::Symlink => {}
            _ => return Ok(0),
        }
        self.readable(&inode)?;
        self.read_content(&inode, offset, buf)
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind()? != FileType::Symlink {
            return Err(Error::Guest(format!("ext4: inode {ino} is not a symlink")));
        }
        self.readable(&inode)?;
        if inode.size > MAX_LINK {
            return Err(Error::Guest(format!(
                "ext4: symlink {ino}: target of {} bytes is longer than {MAX_LINK}",
                inode.size
            )));
        }
        let mut buf = vec![0u8; inode.size as usize];
        let n = self.read_content(&inode, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn map(&self, ino: Ino) -> Result<Vec<Mapping>> {
        let inode = self.inode(ino)?;
        match inode.kind()? {
            FileType::File | FileType::Dir | FileType::Symlink => {}
            _ => return Ok(Vec::new()),
        }
        self.readable(&inode)?;
        self.map_content(&inode)
    }
}
