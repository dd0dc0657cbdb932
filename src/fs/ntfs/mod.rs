//! A read-only NTFS (3.x) reader.
//!
//! Supported:
//! - boot sector geometry (any sector size 256..4 KiB, clusters up to 2 MiB including the
//!   power-of-two encoding above 128 sectors, MFT record and index block sizes from the
//!   signed size fields) — `boot.rs`;
//! - MFT records and index blocks with their update sequence (fixups) checked — `record.rs`;
//! - a fragmented `$MFT`, including one whose `$DATA` continues in extension records named
//!   by its own `$ATTRIBUTE_LIST`; attribute lists (resident or not) of any file, extents
//!   merged; runlists with signed LCN deltas; sparse runs as holes; bytes past the
//!   initialized size read as zeros — `attr.rs`, `inode.rs`;
//! - `$STANDARD_INFORMATION` times (FILETIME, 100 ns) and the read-only attribute (mode
//!   0o444, else 0o644; directories 0o755), `$FILE_NAME` in every namespace, hard links
//!   (nlink counts the names that are not DOS-only);
//! - resident and non-resident `$DATA`; named `$DATA` streams as alternate data streams
//!   ([`Filesystem::streams`], [`Ntfs::read_stream`]);
//! - directories from `$INDEX_ROOT` + `$INDEX_ALLOCATION` (+ `$BITMAP`) — `index.rs`: each
//!   file listed once under its Win32 or POSIX name, never the separate DOS 8.3 entry, but
//!   [`Filesystem::lookup`] also finds a file by its short name (ASCII case-insensitively);
//!   entries whose sequence number no longer matches the record are stale and skipped; the
//!   system files (records below 16 whose name starts with '$') are hidden from the root;
//! - symlinks: reparse points `IO_REPARSE_TAG_SYMLINK` and `IO_REPARSE_TAG_MOUNT_POINT`,
//!   and the Interix links (and devices) ntfs-3g writes — `reparse.rs`; other reparse tags
//!   leave the file as it is;
//! - the label (`$VOLUME_NAME`) and the dirty flag of `$VOLUME_INFORMATION` (a warning);
//! - [`Ntfs::used_clusters`]: the allocated clusters from `$Bitmap`, as byte ranges.
//!
//! Refused, per file, with [`Error::Unsupported`] (the rest of the volume stays readable):
//! compressed `$DATA` (LZNT1), Windows system compression (WofCompressedData reparse
//! points), EFS-encrypted files. Not read: owners and ACLs (`$Secure`), the `$LogFile`
//! (the volume is shown as it lies on disk), `$UsnJrnl`, object ids, quotas, extended
//! attributes. Names that are not valid UTF-16 keep their lone surrogates WTF-8 encoded,
//! so every name stays distinct and can be looked up.

mod attr;
mod boot;
#[cfg(test)]
mod fixture;
mod index;
mod inode;
mod record;
mod reparse;
#[cfg(test)]
mod synth;
#[cfg(test)]
mod tests;

use crate::blockdev::BlockRead;
use crate::fs::{Dev, DirEntry, FileType, Filesystem, Ino, Mapping, Meta, Stream};
use crate::{Error, Result};
use attr::Data;
use boot::Geometry;
use inode::{Inode, Special, AT_DATA, AT_VOLUME_INFORMATION, AT_VOLUME_NAME, NS_DOS};
use record::{record_number, record_seq};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// The root directory's MFT record.
pub const ROOT: u64 = 5;
const VOLUME: u64 = 3;
const BITMAP: u64 = 6;
/// Records below this are the system files hidden from the root listing.
const FIRST_USER: u64 = 16;

/// Total weight (runs, names, 64-byte units) of the cached files, and directory entries
/// of the cached listings.
const INODE_CACHE: usize = 1 << 20;
const DIR_CACHE: usize = 1 << 20;

/// True if the boot sector's OEM id at byte 3 is "NTFS    ".
pub fn probe(dev: &dyn BlockRead) -> bool {
    let mut b = [0u8; 11];
    dev.size() >= 512 && dev.read_at(0, &mut b).is_ok() && &b[3..11] == boot::OEM_ID
}

pub fn open(dev: Dev) -> Result<Arc<dyn Filesystem>> {
    Ok(Arc::new(Ntfs::open(dev)?))
}

/// A bounded map: emptied when the weight of what it holds passes its cap.
struct Cache<T> {
    map: HashMap<u64, (T, usize)>,
    weight: usize,
    cap: usize,
}

impl<T: Clone> Cache<T> {
    fn new(cap: usize) -> Self {
        Cache {
            map: HashMap::new(),
            weight: 0,
            cap,
        }
    }

    fn get(&self, k: u64) -> Option<T> {
        self.map.get(&k).map(|(v, _)| v.clone())
    }

    fn put(&mut self, k: u64, v: T, w: usize) {
        if w > self.cap {
            return;
        }
        if self.weight + w > self.cap {
            self.map.clear();
            self.weight = 0;
        }
        if let Some((_, old)) = self.map.insert(k, (v, w)) {
            self.weight -= old;
        }
        self.weight += w;
    }
}

pub struct Ntfs {
    dev: Dev,
    geo: Geometry,
    /// The `$MFT`'s unnamed `$DATA`.
    mft: Data,
    records: u64,
    label: Option<String>,
    warnings: Vec<String>,
    inodes: Mutex<Cache<Arc<Inode>>>,
    dirs: Mutex<Cache<Arc<Vec<index::IdxEntry>>>>,
}

/// UTF-16 (as stored, perhaps with lone surrogates) → UTF-8 (WTF-8 for lone surrogates).
pub fn utf16_to_utf8(units: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(units.len());
    for r in char::decode_utf16(units.iter().copied()) {
        match r {
            Ok(c) => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
            Err(e) => {
                let u = e.unpaired_surrogate();
                out.extend_from_slice(&[
                    0xE0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3F) as u8,
                    0x80 | (u & 0x3F) as u8,
                ]);
            }
        }
    }
    out
}

impl Ntfs {
    pub fn open(dev: Dev) -> Result<Ntfs> {
        if dev.size() < 512 {
            return Err(Error::Guest(
                "NTFS: volume smaller than a boot sector".into(),
            ));
        }
        let mut bs = [0u8; 512];
        dev.read_at(0, &mut bs)?;
        let geo = Geometry::parse(&bs, dev.size())?;
        let mft = inode::bootstrap_mft(&*dev, &geo)?;
        let records = mft.size / geo.record_size as u64;
        let mut fs = Ntfs {
            dev,
            geo,
            mft,
            records,
            label: None,
            warnings: Vec::new(),
            inodes: Mutex::new(Cache::new(INODE_CACHE)),
            dirs: Mutex::new(Cache::new(DIR_CACHE)),
        };
        match fs.volume_info() {
            Ok((label, warnings)) => {
                fs.label = label;
                fs.warnings = warnings;
            }
            Err(e) => fs.warnings.push(format!(
                "NTFS: $Volume unreadable, no label or dirty flag: {e}"
            )),
        }
        let root = fs.inode(ROOT)?;
        if !root.dir {
            return Err(Error::Guest(
                "NTFS: the root directory (record 5) has no $I30 index".into(),
            ));
        }
        Ok(fs)
    }

    /// The label and warnings from `$Volume`.
    fn volume_info(&self) -> Result<(Option<String>, Vec<String>)> {
        let v = self.inode(VOLUME)?;
        let mut warnings = Vec::new();
        let label = match v.find(AT_VOLUME_NAME, b"") {
            Some(d) => {
                let b = inode::value(&*self.dev, self.geo.cluster_size, d, 4096, "$VOLUME_NAME")?;
                let units: Vec<u16> = b
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Some(String::from_utf8_lossy(&utf16_to_utf8(&units)).into_owned())
                    .filter(|s| !s.is_empty())
            }
            None => None,
        };
        if let Some(d) = v.find(AT_VOLUME_INFORMATION, b"") {
            let b = inode::value(
                &*self.dev,
                self.geo.cluster_size,
                d,
                4096,
                "$VOLUME_INFORMATION",
            )?;
            let le = crate::fs::Le::new(&b, "NTFS: $VOLUME_INFORMATION");
            let (major, minor, flags) = (le.u8(8)?, le.u8(9)?, le.u16(10)?);
            if major != 3 {
                warnings.push(format!(
                    "NTFS: version {major}.{minor}; this reader is written for 3.x"
                ));
            }
            if flags & 0x0001 != 0 {
                warnings.push(
                    "NTFS: the volume was not cleanly unmounted (dirty flag set); files are \
                     shown as on disk"
                        .into(),
                );
            }
        }
        Ok((label, warnings))
    }

    fn cache_get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes.lock().ok()?.get(ino)
    }

    fn cache_put(&self, ino: u64, i: Arc<Inode>) {
        let w = i.weight();
        if let Ok(mut c) = self.inodes.lock() {
            c.put(ino, i, w);
        }
    }

    /// The index entries of directory `ino` (cached).
    fn dir_entries(&self, ino: u64) -> Result<Arc<Vec<index::IdxEntry>>> {
        if let Some(e) = self.dirs.lock().ok().and_then(|c| c.get(ino)) {
            return Ok(e);
        }
        let dir = self.inode(ino)?;
        let e = Arc::new(self.index_entries(&dir)?);
        if let Ok(mut c) = self.dirs.lock() {
            c.put(ino, e.clone(), e.len() + 1);
        }
        Ok(e)
    }

    /// The entry as listed: None if it is hidden or stale.
    fn entry(&self, dir: u64, e: &index::IdxEntry) -> Option<DirEntry> {
        let n = record_number(e.mref);
        if e.name == b"." || e.name == b".." {
            return None;
        }
        if dir == ROOT && n < FIRST_USER && e.name.first() == Some(&b'$') {
            return None;
        }
        let kind = match self.inode(n) {
            Ok(i) if record_seq(e.mref) != 0 && i.seq != record_seq(e.mref) => return None,
            Ok(i) => i.kind(),
            // Listed anyway: stat names the damage when the file is opened.
            Err(_) if e.is_dir => FileType::Dir,
            Err(_) => FileType::File,
        };
        Some(DirEntry {
            name: e.name.clone(),
            ino: n,
            kind,
        })
    }

    /// The content stream `name` of file `inode`, refused if compressed or encrypted.
    fn stream<'a>(&self, inode: &'a Inode, name: &[u8]) -> Result<Option<&'a Data>> {
        let d = inode.find(AT_DATA, name);
        let w = |feature: &str| {
            Err(Error::Unsupported(format!(
                "NTFS: {feature} is not supported (MFT record {})",
                inode.ino
            )))
        };
        if inode.reparse_tag == Some(reparse::TAG_WOF) {
            return w("Windows system compression (WofCompressedData)");
        }
        if inode.std.attrs & inode::FILE_ATTR_ENCRYPTED != 0 || d.is_some_and(Data::encrypted) {
            return w("EFS encryption");
        }
        if d.is_some_and(Data::compressed) {
            return w("file compression (LZNT1)");
        }
        Ok(d)
    }

    fn file(&self, ino: Ino) -> Result<Arc<Inode>> {
        let i = self.inode(ino)?;
        if i.kind() != FileType::File {
            return Err(Error::Guest(format!(
                "NTFS: MFT record {ino} is not a regular file"
            )));
        }
        Ok(i)
    }

    /// Reads the alternate data stream `name` of file `ino` at `offset`.
    pub fn read_stream(&self, ino: Ino, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.inode(ino)?;
        let what = format!("NTFS: MFT record {ino}: stream {name}");
        match self.stream(&i, name.as_bytes())? {
            Some(d) if !name.is_empty() => {
                d.read(&*self.dev, self.geo.cluster_size, offset, buf, &what)
            }
            _ => Err(Error::Guest(format!("{what}: no such stream"))),
        }
    }

    /// Bytes per cluster: the allocation unit of [`Ntfs::used_clusters`] and of
    /// [`Filesystem::map`] pieces.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size
    }

    /// The volume's allocated clusters (from `$Bitmap`), as merged byte ranges.
    pub fn used_clusters(&self) -> Result<Vec<Range<u64>>> {
        let bm = self.inode(BITMAP)?;
        let d = bm
            .find(AT_DATA, b"")
            .ok_or_else(|| Error::Guest("NTFS: $Bitmap has no $DATA".into()))?;
        let cs = self.geo.cluster_size;
        // Clusters past the device's end are not worth a bit-by-bit scan.
        let total = self.geo.total_clusters.min(self.dev.size().div_ceil(cs));
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut add = |start: u64, n: u64| {
            let (s, e) = (start.saturating_mul(cs), (start + n).saturating_mul(cs));
            match out.last_mut() {
                Some(r) if r.end == s => r.end = e,
                _ => out.push(s..e),
            }
        };
        let mut buf = vec![0u8; 1 << 16];
        let mut cluster = 0u64;
        while cluster < total {
            let n = d.read(&*self.dev, cs, cluster / 8, &mut buf, "NTFS: $Bitmap")?;
            if n == 0 {
                break;
            }
            for &byte in &buf[..n] {
                let left = total - cluster;
                if left == 0 {
                    break;
                }
                match byte {
                    0 => {}
                    0xFF => add(cluster, left.min(8)),
                    _ => {
                        for bit in 0..left.min(8) {
                            if byte & (1 << bit) != 0 {
                                add(cluster + bit, 1);
                            }
                        }
                    }
                }
                cluster += left.min(8);
            }
        }
        Ok(out)
    }
}

impl Filesystem for Ntfs {
    fn kind(&self) -> &'static str {
        "ntfs"
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
        let i = self.inode(ino)?;
        let kind = i.kind();
        let (size, rdev) = match &i.special {
            Special::Link(t) => (t.len() as u64, None),
            Special::Dev(_, ma, mi) => (0, Some((*ma, *mi))),
            Special::None if i.dir => (
                i.find(inode::AT_INDEX_ALLOCATION, b"$I30")
                    .map_or(0, |d| d.size),
                None,
            ),
            Special::None => (i.find(AT_DATA, b"").map_or(0, |d| d.size), None),
        };
        let mode = match kind {
            FileType::Dir => 0o755,
            FileType::Symlink => 0o777,
            _ if i.std.attrs & inode::FILE_ATTR_READONLY != 0 => 0o444,
            _ => 0o644,
        };
        let nlink = i.names.iter().filter(|n| n.namespace != NS_DOS).count();
        Ok(Meta {
            ino,
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            nlink: (nlink as u32).max(1),
            mtime: i.std.mtime,
            atime: i.std.atime,
            ctime: i.std.ctime,
            rdev,
            owner: None,
        })
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let entries = self.dir_entries(ino)?;
        Ok(entries
            .iter()
            .filter(|e| e.namespace != NS_DOS)
            .filter_map(|e| self.entry(ino, e))
            .collect())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.file(ino)?;
        match self.stream(&i, b"")? {
            Some(d) => d.read(
                &*self.dev,
                self.geo.cluster_size,
                offset,
                buf,
                &format!("NTFS: MFT record {ino}: $DATA"),
            ),
            None => Ok(0),
        }
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        match &self.inode(ino)?.special {
            Special::Link(t) => Ok(t.clone()),
            _ => Err(Error::Guest(format!(
                "NTFS: MFT record {ino} is not a symlink"
            ))),
        }
    }

    fn map(&self, ino: Ino) -> Result<Vec<Mapping>> {
        let i = self.file(ino)?;
        Ok(self
            .stream(&i, b"")?
            .map_or_else(Vec::new, |d| d.mappings(self.geo.cluster_size)))
    }

    fn streams(&self, ino: Ino) -> Result<Vec<Stream>> {
        let i = self.inode(ino)?;
        Ok(i.attrs
            .iter()
            .filter(|(t, d)| *t == AT_DATA && !d.name.is_empty())
            .map(|(_, d)| Stream {
                name: String::from_utf8_lossy(&d.name).into_owned(),
                size: d.size,
            })
            .collect())
    }

    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<DirEntry>> {
        let entries = self.dir_entries(dir)?;
        let long = entries
            .iter()
            .filter(|e| e.namespace != NS_DOS && e.name == name);
        let short = entries
            .iter()
            .filter(|e| e.namespace >= NS_DOS && e.name.eq_ignore_ascii_case(name));
        Ok(long.chain(short).find_map(|e| self.entry(dir, e)))
    }
}
