//! A read-only FAT12/FAT16/FAT32 reader with VFAT long names: EFI system partitions, old
//! Windows volumes, USB-stick and floppy images.
//!
//! Supported:
//! - the three FAT types, chosen by cluster count as Microsoft's specification says
//!   (fewer than 4085 clusters: FAT12, fewer than 65525: FAT16, else FAT32), except that a
//!   FAT32-style boot sector with too few clusters (mkfs.fat makes them on small volumes)
//!   is read as FAT32 with a warning, as Linux does;
//! - 512 to 4096-byte sectors, 1 to 128 sectors per cluster, one or two FATs (FAT32's
//!   active FAT when mirroring is off); FSInfo's free-cluster hints are ignored;
//! - the fixed root directory region of FAT12/16 and FAT32's root cluster chain;
//! - cluster chains checked as they are followed: every link inside the volume, no free or
//!   bad cluster, never longer than the volume's cluster count, no cluster twice (a loop),
//!   and a file's chain must cover its size (clusters past that are not looked at);
//! - 8.3 names (code page 437, with the Windows NT lower-case bits for base and
//!   extension) and VFAT long names (checksum, ordinal sequence, UTF-16 to UTF-8; orphaned
//!   or damaged long-name entries are dropped and the short name is used);
//! - case-insensitive [`lookup`](Filesystem::lookup) by long or short name, as FAT
//!   compares them;
//! - the volume label from the root directory's label entry, else the boot sector's;
//! - times: mtime from the write date and time (2 s resolution), atime from the access
//!   date, ctime from the creation date and time with its 10 ms field. FAT stores local
//!   time with no zone: **these times are read as UTC**;
//! - a warning when the volume was not cleanly unmounted (the "clean" bit in FAT entry 1 of
//!   FAT16/32, or the boot sector's dirty flag) or recorded disk errors.
//!
//! Files have mode 0o644 (0o444 with the read-only attribute), directories 0o755, uid and
//! gid 0. Directories report the bytes of their cluster chain as their size (FAT records
//! 0). An inode number is the volume byte offset of the entry's 32-byte short entry
//! ([`ROOT`] for the root), so [`stat`](Filesystem::stat) works from the number alone: it
//! re-reads that entry and checks that it can be one (32-byte aligned, inside the root
//! region or an allocated cluster, a live file or directory entry).
//!
//! Refused: exFAT (recognised, [`Error::Unsupported`]), and a directory longer than the
//! 65536 entries the format allows. Not read: extended attributes of OS/2, the hidden and
//! system attributes (no Unix equivalent), FAT copies other than the one in use.

mod bpb;
mod dir;
mod names;
mod table;
#[cfg(test)]
mod tests;

pub use bpb::FatType;

use crate::blockdev::BlockRead;
use crate::fs::{read_vec, Dev, DirEntry, FileType, Filesystem, Ino, Mapping, Meta, Time};
use crate::{lock, Error, Result};
use bpb::Geometry;
use dir::{Info, Listing};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use table::{Run, Table, Want};

/// The root directory's inode number (no entry lies at byte 1 of a volume).
pub const ROOT: Ino = 1;

/// A directory holds at most 65536 entries of 32 bytes.
const MAX_DIR_BYTES: u64 = 65536 * 32;
/// Cached directory listings: at most this many, holding at most [`CACHE_ENTRIES`].
const CACHE_DIRS: usize = 256;
const CACHE_ENTRIES: usize = 200_000;
/// Cached cluster chains: at most this many, holding at most [`CACHE_RUNS`] runs.
const CACHE_CHAINS: usize = 1024;
const CACHE_RUNS: usize = 4 << 20;

/// True for a FAT boot sector: a jump instruction, power-of-two sector (512-4096) and
/// cluster sizes, reserved sectors, one or two FATs, 0x55AA, and either a "FAT…"
/// file-system type string or a geometry that adds up. NTFS and exFAT, which share the
/// boot sector's outline, are not claimed.
pub fn probe(dev: &dyn BlockRead) -> bool {
    let mut b = [0u8; 512];
    dev.size() >= 512 && dev.read_at(0, &mut b).is_ok() && bpb::looks_like_fat(&b, dev.size())
}

/// Opens a FAT volume as a [`Filesystem`].
pub fn open(dev: Dev) -> Result<Arc<dyn Filesystem>> {
    Ok(Arc::new(Fat::open(dev)?))
}

/// A cluster chain with the file offset (in clusters) where each run starts.
struct Chain {
    runs: Vec<(u64, Run)>,
}

/// An open FAT volume.
pub struct Fat {
    dev: Dev,
    geo: Geometry,
    table: Table,
    label: Option<String>,
    warnings: Vec<String>,
    dirs: Mutex<HashMap<Ino, Arc<Listing>>>,
    chains: Mutex<HashMap<(u32, bool, u64), Arc<Chain>>>,
}

/// What an inode number stands for.
enum Node {
    Root,
    Entry(Info),
}

impl Fat {
    /// Reads the boot sector and FAT entry 1; the root directory is read for its label.
    pub fn open(dev: Dev) -> Result<Fat> {
        if dev.size() < 512 {
            return Err(Error::Guest(format!(
                "FAT: the volume ({} bytes) is smaller than a boot sector",
                dev.size()
            )));
        }
        let mut b = [0u8; 512];
        dev.read_at(0, &mut b)?;
        let geo = bpb::parse(&b, dev.size())?;
        let table = Table::new(dev.clone(), &geo);
        let mut warnings = geo.notes.clone();
        let (clean, no_error) = table.flags()?;
        if !clean {
            warnings.push(format!(
                "{}: the volume was not cleanly unmounted (FAT entry 1); it is read as it is",
                geo.fat_type.name()
            ));
        }
        if !no_error {
            warnings.push(format!(
                "{}: the volume recorded disk I/O errors (FAT entry 1)",
                geo.fat_type.name()
            ));
        }
        let mut fat = Fat {
            dev,
            geo,
            table,
            label: None,
            warnings,
            dirs: Mutex::new(HashMap::new()),
            chains: Mutex::new(HashMap::new()),
        };
        fat.label = match fat.listing(ROOT) {
            Ok(l) => l.label.clone(),
            Err(e) => {
                fat.warnings
                    .push(format!("the root directory cannot be read: {e}"));
                None
            }
        }
        .or_else(|| fat.geo.bpb_label.clone());
        Ok(fat)
    }

    pub fn fat_type(&self) -> FatType {
        self.geo.fat_type
    }

    /// Byte ranges of the volume in use per the FAT, merged: the reserved sectors, FATs
    /// and root directory region, then every cluster neither free nor marked bad.
    pub fn used_clusters(&self) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        out.push(0..self.geo.data_offset);
        for r in self.table.used(&self.geo)? {
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        Ok(out)
    }

    fn node(&self, ino: Ino) -> Result<Node> {
        if ino == ROOT {
            return Ok(Node::Root);
        }
        let g = &self.geo;
        let bad = |why: &str| Err(Error::Guest(format!("FAT: inode {ino}: {why}")));
        let in_root = ino >= g.root_offset && ino - g.root_offset < g.root_entries * 32;
        let in_data = ino >= g.data_offset && ino < g.data_end();
        if ino % 32 != 0 || !(in_root || in_data) {
            return bad("not the position of a directory entry");
        }
        if in_data && !in_root {
            let c = 2 + (ino - g.data_offset) / g.cluster_size;
            if matches!(self.table.next(c as u32)?, table::Next::Free) {
                return bad("lies in a free cluster");
            }
        }
        let mut raw = [0u8; 32];
        self.dev.read_at(ino, &mut raw)?;
        match dir::kind(&raw) {
            dir::Kind::Entry(_) => Ok(Node::Entry(dir::info(&raw, g.fat_type == FatType::Fat32))),
            _ => bad("not a file or directory entry"),
        }
    }

    /// The chain of a file (exactly the clusters its size needs) or of a directory (to
    /// its end, at most 65536 entries' worth).
    fn chain(&self, first: u32, want: Want, what: &dyn Fn() -> String) -> Result<Arc<Chain>> {
        let key = match want {
            Want::Clusters(n) => (first, true, n),
            Want::ToEnd(n) => (first, false, n),
        };
        if let Some(c) = lock(&self.chains).get(&key) {
            return Ok(c.clone());
        }
        let runs = self.table.chain(first, want, &what())?;
        let mut at = 0u64;
        let runs: Vec<(u64, Run)> = runs
            .into_iter()
            .map(|r| {
                let start = at;
                at += u64::from(r.len);
                (start, r)
            })
            .collect();
        let chain = Arc::new(Chain { runs });
        let mut cache = lock(&self.chains);
        let total: usize = cache.values().map(|c| c.runs.len()).sum();
        if cache.len() >= CACHE_CHAINS || total + chain.runs.len() > CACHE_RUNS {
            cache.clear();
        }
        cache.insert(key, chain.clone());
        Ok(chain)
    }

    fn dir_cap(&self) -> u64 {
        MAX_DIR_BYTES.div_ceil(self.geo.cluster_size)
    }

    /// A file's chain: the clusters holding `0..size`.
    fn file_chain(&self, ino: Ino, info: &Info) -> Result<Arc<Chain>> {
        let need = u64::from(info.size).div_ceil(self.geo.cluster_size);
        if need > self.geo.clusters {
            return Err(Error::Guest(format!(
                "FAT: file {ino}: its size of {} bytes needs more clusters than the volume has",
                info.size
            )));
        }
        if need > 0 && info.first_cluster == 0 {
            return Err(Error::Guest(format!(
                "FAT: file {ino}: {} bytes but no cluster",
                info.size
            )));
        }
        self.chain(info.first_cluster, Want::Clusters(need), &|| {
            format!("file {ino}")
        })
    }

    /// A directory's chain (not for the FAT12/16 root, which has none).
    fn dir_chain(&self, ino: Ino, first: u32) -> Result<Arc<Chain>> {
        if first == 0 {
            return Err(Error::Guest(format!("FAT: directory {ino} has no cluster")));
        }
        self.chain(first, Want::ToEnd(self.dir_cap()), &|| {
            format!("directory {ino}")
        })
    }

    /// Where a directory's bytes lie: (volume offset, length) pieces.
    fn dir_extents(&self, ino: Ino) -> Result<Vec<(u64, u64)>> {
        let g = &self.geo;
        let first = match self.node(ino)? {
            Node::Root if g.fat_type != FatType::Fat32 => {
                return Ok(vec![(g.root_offset, g.root_entries * 32)]);
            }
            Node::Root => g.root_cluster,
            Node::Entry(i) if i.is_dir() => i.first_cluster,
            Node::Entry(_) => {
                return Err(Error::Usage(format!("FAT: inode {ino} is not a directory")));
            }
        };
        let chain = self.dir_chain(ino, first)?;
        Ok(chain
            .runs
            .iter()
            .map(|(_, r)| (g.cluster_offset(r.first), u64::from(r.len) * g.cluster_size))
            .collect())
    }

    fn listing(&self, ino: Ino) -> Result<Arc<Listing>> {
        if let Some(l) = lock(&self.dirs).get(&ino) {
            return Ok(l.clone());
        }
        let extents = self.dir_extents(ino)?;
        let total: u64 = extents.iter().map(|e| e.1).sum();
        let mut buf = Vec::with_capacity(total.min(MAX_DIR_BYTES) as usize);
        let mut starts = Vec::with_capacity(extents.len());
        for &(off, len) in &extents {
            starts.push((buf.len(), off));
            let cap = MAX_DIR_BYTES.saturating_sub(buf.len() as u64);
            buf.extend(read_vec(self.dev.as_ref(), off, len, cap, "FAT directory")?);
        }
        let at = |pos: usize| {
            let i = starts.partition_point(|s| s.0 <= pos).saturating_sub(1);
            starts.get(i).map_or(0, |&(b, off)| off + (pos - b) as u64)
        };
        let l = Arc::new(dir::parse(
            &buf,
            at,
            self.geo.fat_type == FatType::Fat32,
            ino == ROOT,
        ));
        let mut cache = lock(&self.dirs);
        let held: usize = cache.values().map(|l| l.entries.len()).sum();
        if cache.len() >= CACHE_DIRS || held + l.entries.len() > CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(ino, l.clone());
        Ok(l)
    }

    fn meta(&self, ino: Ino, node: &Node) -> Meta {
        let g = &self.geo;
        let dir_size = |first| {
            self.dir_chain(ino, first)
                .map(|c| c.runs.iter().map(|(_, r)| u64::from(r.len)).sum::<u64>() * g.cluster_size)
                .unwrap_or(0)
        };
        let (kind, mode, size, mtime, atime, ctime) = match node {
            Node::Root => {
                let size = if g.fat_type == FatType::Fat32 {
                    dir_size(g.root_cluster)
                } else {
                    g.root_entries * 32
                };
                let t = Time::default();
                (FileType::Dir, 0o755, size, t, t, t)
            }
            Node::Entry(i) => {
                let (kind, mode, size) = if i.is_dir() {
                    (FileType::Dir, 0o755, dir_size(i.first_cluster))
                } else if i.attr & dir::ATTR_READ_ONLY != 0 {
                    (FileType::File, 0o444, u64::from(i.size))
                } else {
                    (FileType::File, 0o644, u64::from(i.size))
                };
                (kind, mode, size, i.mtime, i.atime, i.ctime)
            }
        };
        Meta {
            ino,
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            mtime,
            atime,
            ctime,
            rdev: None,
            owner: None,
        }
    }

    fn file(&self, ino: Ino) -> Result<Info> {
        match self.node(ino)? {
            Node::Entry(i) if !i.is_dir() => Ok(i),
            _ => Err(Error::Usage(format!("FAT: inode {ino} is a directory"))),
        }
    }
}

fn dir_entry(e: &dir::Entry) -> DirEntry {
    DirEntry {
        name: e.name.as_bytes().to_vec(),
        ino: e.offset,
        kind: if e.info.is_dir() {
            FileType::Dir
        } else {
            FileType::File
        },
    }
}

impl Filesystem for Fat {
    fn kind(&self) -> &'static str {
        "vfat"
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn stat(&self, ino: Ino) -> Result<Meta> {
        let node = self.node(ino)?;
        Ok(self.meta(ino, &node))
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        Ok(self.listing(ino)?.entries.iter().map(dir_entry).collect())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let info = self.file(ino)?;
        let size = u64::from(info.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (size - offset).min(buf.len() as u64) as usize;
        let chain = self.file_chain(ino, &info)?;
        let cs = self.geo.cluster_size;
        let mut done = 0usize;
        // The run holding `offset`, then the ones after it.
        let first = chain
            .runs
            .partition_point(|(start, _)| *start * cs <= offset)
            .saturating_sub(1);
        for (start, run) in chain.runs.iter().skip(first) {
            if done == want {
                break;
            }
            let pos = offset + done as u64;
            let run_start = start * cs;
            let run_end = run_start + u64::from(run.len) * cs;
            if pos < run_start || pos >= run_end {
                break;
            }
            let n = ((run_end - pos) as usize).min(want - done);
            let disk = self.geo.cluster_offset(run.first) + (pos - run_start);
            let piece = buf
                .get_mut(done..done + n)
                .ok_or_else(|| Error::Other("FAT: read buffer arithmetic went wrong".into()))?;
            self.dev.read_at(disk, piece)?;
            done += n;
        }
        if done < want {
            return Err(Error::Guest(format!(
                "FAT: file {ino}: its clusters end before byte {}",
                offset + done as u64
            )));
        }
        Ok(done)
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        Err(Error::Usage(format!(
            "FAT: inode {ino} is not a symbolic link (FAT has none)"
        )))
    }

    fn map(&self, ino: Ino) -> Result<Vec<Mapping>> {
        let g = &self.geo;
        let chain = match self.node(ino)? {
            Node::Entry(i) if !i.is_dir() => self.file_chain(ino, &i)?,
            _ => {
                let mut at = 0;
                return Ok(self
                    .dir_extents(ino)?
                    .into_iter()
                    .map(|(off, len)| {
                        let m = Mapping {
                            file_offset: at,
                            len,
                            disk_offset: Some(off),
                            data: true,
                        };
                        at += len;
                        m
                    })
                    .collect());
            }
        };
        Ok(chain
            .runs
            .iter()
            .map(|(start, r)| Mapping {
                file_offset: start * g.cluster_size,
                len: u64::from(r.len) * g.cluster_size,
                disk_offset: Some(g.cluster_offset(r.first)),
                data: true,
            })
            .collect())
    }

    /// Finds `name` as FAT does: an exact match first, then the long or the short name
    /// compared case-insensitively.
    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let l = self.listing(dir)?;
        if let Some(e) = l.entries.iter().find(|e| e.name.as_bytes() == name) {
            return Ok(Some(dir_entry(e)));
        }
        let Some(want) = names::fold(name) else {
            return Ok(None);
        };
        let same = |s: &str| names::fold(s.as_bytes()).as_ref() == Some(&want);
        Ok(l.entries
            .iter()
            .find(|e| same(&e.name) || same(&e.short))
            .map(dir_entry))
    }
}
