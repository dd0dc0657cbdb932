//! Disk image writers, for restore: a disk comes back in the form its hypervisor opens (a
//! qcow2 source as qcow2, a VMDK as a monolithicSparse VMDK, everything else as raw).
//!
//! Restore fetches chunks pack by pack from several threads, so guest ranges arrive in no
//! particular order, and it never writes holes. The writers are built for that:
//!
//! - Every write is a `pwrite` on a shared file; nothing is buffered, so memory does not
//!   grow with the disk.
//! - The sparse formats allocate a host cluster the first time a guest cluster is written
//!   ([`ClusterFile`], shared by qcow2 and VMDK). Only the allocation takes a lock; the data
//!   is written outside it. Host clusters are handed out in order, so the file grows
//!   sparse: the bytes of a cluster nobody wrote stay zero, which is what a hole reads as.
//! - The tables mapping guest to host clusters are kept as one small array per table the
//!   format has (qcow2 L2 table, VMDK grain table), made when the first cluster under it is
//!   written; [`DiskWriter::finish`] turns them into the format's metadata and writes the
//!   header last, so a file whose restore did not finish is not a valid image.
//!
//! Guest sizes of the sparse formats are counted in 512-byte sectors by qemu and VMware; a
//! size that is not a multiple of 512 is rounded up (the extra bytes read as zeros).

use super::{write_qcow2, write_vmdk};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The form a restored disk is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Raw,
    Qcow2,
    Vmdk,
}

impl OutFormat {
    /// The form to restore a disk backed up from a `format` source (the name a reader's
    /// [`super::DiskImage::format`] gives). qcow2 and VMDK come back as themselves; VHD and
    /// VHDX come back raw, which every hypervisor imports (cairn writes no VHD), as does
    /// anything unknown.
    pub fn for_source(format: &str) -> OutFormat {
        match format {
            "qcow2" => OutFormat::Qcow2,
            "vmdk" => OutFormat::Vmdk,
            _ => OutFormat::Raw,
        }
    }

    /// The format's name as `qemu-img -f` spells it.
    pub fn name(self) -> &'static str {
        match self {
            OutFormat::Raw => "raw",
            OutFormat::Qcow2 => "qcow2",
            OutFormat::Vmdk => "vmdk",
        }
    }

    /// The file name extension for a disk written in this format, without the dot.
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

/// A disk image being written by a restore.
pub trait DiskWriter: Send + Sync {
    /// Writes guest bytes at a guest offset. Called from many threads in any order; ranges
    /// of different calls never overlap; holes are never written (they read as zeros).
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Writes the metadata (tables, header) and fsyncs the file. Called once, after all
    /// writes.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Creates (truncating) `path` for a disk of `size` guest bytes in `format`.
pub fn create(format: OutFormat, path: &Path, size: u64) -> Result<Box<dyn DiskWriter>> {
    if size > super::MAX_SIZE {
        return Err(Error::Usage(format!(
            "{}: cannot write a disk of {size} bytes (the limit is {} bytes)",
            path.display(),
            super::MAX_SIZE
        )));
    }
    Ok(match format {
        OutFormat::Raw => Box::new(RawWriter::create(path, size)?),
        OutFormat::Qcow2 => Box::new(write_qcow2::Qcow2Writer::create(path, size)?),
        OutFormat::Vmdk => Box::new(write_vmdk::VmdkWriter::create(path, size)?),
    })
}

/// A raw disk: a sparse file of the guest size, written at guest offsets.
struct RawWriter {
    out: OutFile,
}

impl RawWriter {
    fn create(path: &Path, size: u64) -> Result<RawWriter> {
        let out = OutFile::create(path, size)?;
        out.set_len(size)?;
        Ok(RawWriter { out })
    }
}

impl DiskWriter for RawWriter {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.out.check_range(offset, data.len())?;
        self.out.pwrite(data, offset)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.out.sync()
    }
}

/// The output file with its name, for error messages, and the guest size writes must stay
/// inside.
pub(super) struct OutFile {
    file: File,
    path: PathBuf,
    size: u64,
}

impl OutFile {
    fn create(path: &Path, size: u64) -> Result<OutFile> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("creating disk image {}", path.display()), e))?;
        Ok(OutFile {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a write outside the guest disk: it would be a bug in the caller, and
    /// writing it would grow the disk or corrupt metadata.
    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::Other(format!(
                "{}: write of {len} bytes at guest offset {offset} is outside the {}-byte disk",
                self.path.display(),
                self.size
            ))),
        }
    }

    pub(super) fn pwrite(&self, data: &[u8], at: u64) -> Result<()> {
        self.file.write_all_at(data, at).map_err(|e| {
            Error::io(
                format!(
                    "writing {} bytes at offset {at} of {}",
                    data.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }

    pub(super) fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io(format!("setting the length of {}", self.path.display()), e))
    }

    pub(super) fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("flushing {} to disk", self.path.display()), e))
    }
}

/// Geometry of a cluster-mapped format: what [`ClusterFile`] needs to know of it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    /// log2 of the cluster (qcow2) or grain (VMDK) size in bytes.
    pub cluster_bits: u32,
    /// log2 of the number of clusters one table (L2 table, grain table) maps.
    pub table_bits: u32,
    /// The first host cluster that may hold data; the ones before hold the header.
    pub first_data: u32,
    /// One past the last host cluster the format can address.
    pub limit: u32,
}

/// The lazy cluster allocator both sparse writers share: guest clusters get host clusters
/// in the order they are first written, data goes straight to the file.
pub(super) struct ClusterFile {
    out: OutFile,
    geo: Geometry,
    map: Mutex<ClusterMap>,
}

impl ClusterFile {
    pub(super) fn create(path: &Path, size: u64, geo: Geometry) -> Result<ClusterFile> {
        Ok(ClusterFile {
            out: OutFile::create(path, size)?,
            geo,
            map: Mutex::new(ClusterMap::new(geo)),
        })
    }

    pub(super) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.out.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let bits = self.geo.cluster_bits;
        let first = offset >> bits;
        let last = (offset + data.len() as u64 - 1) >> bits;
        let hosts = self.allocate(first..=last)?;
        // Clusters allocated together usually sit next to each other on the host: one
        // pwrite per run of consecutive host clusters.
        let mut done = 0usize;
        for run in consecutive_runs(&hosts) {
            let guest = offset + done as u64;
            let run_end = ((first + run.end as u64) << bits).min(offset + data.len() as u64);
            let len = (run_end - guest) as usize;
            let host = (u64::from(hosts[run.start]) << bits) + (guest & ((1 << bits) - 1));
            self.out.pwrite(&data[done..done + len], host)?;
            done += len;
        }
        Ok(())
    }

    /// Host cluster of each guest cluster in `guests`, allocating the missing ones. The
    /// only step under the lock.
    fn allocate(&self, guests: RangeInclusive<u64>) -> Result<Vec<u32>> {
        let mut map = self.map.lock().map_err(|_| poisoned(&self.out))?;
        let mut hosts = Vec::with_capacity((guests.end() - guests.start() + 1) as usize);
        for g in guests {
            let h = map.host_or_allocate(g).ok_or_else(|| {
                Error::Other(format!(
                    "{}: the image is full: it can hold at most {} bytes of data in {}-byte \
                     clusters; restore this disk as raw instead",
                    self.out.path().display(),
                    u64::from(self.geo.limit - self.geo.first_data) << self.geo.cluster_bits,
                    1u64 << self.geo.cluster_bits
                ))
            })?;
            hosts.push(h);
        }
        Ok(hosts)
    }

    /// Ends the writing phase: the file and the guest → host map, for the format to turn
    /// into its metadata.
    pub(super) fn into_parts(self) -> Result<(OutFile, ClusterMap)> {
        let ClusterFile { out, map, .. } = self;
        match map.into_inner() {
            Ok(map) => Ok((out, map)),
            Err(_) => Err(poisoned(&out)),
        }
    }
}

/// A thread panicked while holding the allocation lock: the map may be half updated.
fn poisoned(out: &OutFile) -> Error {
    Error::Other(format!(
        "{}: a writer thread panicked while allocating clusters",
        out.path().display()
    ))
}

/// Index ranges of `hosts` whose values go up by one.
fn consecutive_runs(hosts: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= hosts.len() {
            return None;
        }
        let mut end = start + 1;
        while end < hosts.len() && hosts[end] == hosts[end - 1].wrapping_add(1) {
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// Guest cluster → host cluster, as one array per format table that has any cluster
/// allocated (0 = unallocated: host cluster 0 always holds the header). Memory is
/// proportional to the data written, whatever the disk's size: a 1 TiB disk with 1 GiB
/// restored into it costs two qcow2 L2 arrays of 32 KiB, not a map of the whole disk.
pub(super) struct ClusterMap {
    geo: Geometry,
    tables: BTreeMap<u64, Box<[u32]>>,
    next: u32,
}

impl ClusterMap {
    fn new(geo: Geometry) -> ClusterMap {
        ClusterMap {
            geo,
            tables: BTreeMap::new(),
            next: geo.first_data,
        }
    }

    /// The host cluster of guest cluster `guest`, allocating the next free one if it has
    /// none; None when the format cannot address another cluster.
    fn host_or_allocate(&mut self, guest: u64) -> Option<u32> {
        let per_table = 1usize << self.geo.table_bits;
        let table = self
            .tables
            .entry(guest >> self.geo.table_bits)
            .or_insert_with(|| vec![0u32; per_table].into_boxed_slice());
        let slot = &mut table[(guest as usize) & (per_table - 1)];
        if *slot == 0 {
            if self.next >= self.geo.limit {
                return None;
            }
            *slot = self.next;
            self.next += 1;
        }
        Some(*slot)
    }

    /// Tables with at least one allocated cluster, by table index, in guest order. Each
    /// entry is a host cluster number, 0 for unallocated.
    pub(super) fn tables(&self) -> impl Iterator<Item = (u64, &[u32])> + '_ {
        self.tables.iter().map(|(i, t)| (*i, &t[..]))
    }

    pub(super) fn table_count(&self) -> u64 {
        self.tables.len() as u64
    }

    /// One past the last host cluster holding data.
    pub(super) fn data_end(&self) -> u64 {
        u64::from(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_where_host_clusters_jump() {
        let runs: Vec<_> = consecutive_runs(&[5, 6, 7, 2, 9, 10]).collect();
        assert_eq!(runs, vec![0..3, 3..4, 4..6]);
        assert_eq!(consecutive_runs(&[]).count(), 0);
    }

    #[test]
    fn map_allocates_in_first_write_order_and_stops_at_the_limit() {
        let geo = Geometry {
            cluster_bits: 16,
            table_bits: 2,
            first_data: 3,
            limit: 6,
        };
        let mut m = ClusterMap::new(geo);
        assert_eq!(m.host_or_allocate(9), Some(3));
        assert_eq!(m.host_or_allocate(0), Some(4));
        assert_eq!(m.host_or_allocate(9), Some(3));
        assert_eq!(m.host_or_allocate(1), Some(5));
        assert_eq!(m.host_or_allocate(2), None);
        let tables: Vec<_> = m.tables().map(|(i, t)| (i, t.to_vec())).collect();
        assert_eq!(tables, vec![(0, vec![4, 5, 0, 0]), (2, vec![0, 3, 0, 0])]);
        assert_eq!(m.data_end(), 6);
        assert_eq!(m.table_count(), 2);
    }

    #[test]
    fn source_formats_map_to_output_formats() {
        assert_eq!(OutFormat::for_source("qcow2"), OutFormat::Qcow2);
        assert_eq!(OutFormat::for_source("vmdk"), OutFormat::Vmdk);
        for f in ["raw", "vhd", "vhdx", "something"] {
            assert_eq!(OutFormat::for_source(f), OutFormat::Raw);
        }
        assert_eq!(OutFormat::Vmdk.extension(), "vmdk");
    }
}
