//! The VMDK writer: one hosted sparse extent ("KDMV", version 1) with its descriptor
//! embedded, createType "monolithicSparse": the single-file VMDK that VMware Workstation,
//! ESXi's importers, VirtualBox and qemu all open. 64 KiB grains, 512 entries per grain
//! table, no compression.
//!
//! The layout is the one VMware and `qemu-img create` use: header, descriptor, redundant
//! grain directory and tables, grain directory and tables, then the grains. Unlike qcow2's
//! L2 tables, every grain table of a sparse extent must exist (readers and writers, qemu
//! among them, do not allocate grain tables later), so their room is reserved up front; it
//! is known from the disk size alone. Tables with no grain are never written and stay
//! holes in the file: a 1 TiB disk reserves 128 MiB of tables but allocates only the few
//! that map data.

use super::write::{ClusterFile, DiskWriter, Geometry, OutFile};
use crate::{Error, Result};
use std::path::Path;

const SECTOR: u64 = 512;
const GRAIN_BITS: u32 = 16;
const GRAIN_SECTORS: u64 = (1 << GRAIN_BITS) / SECTOR;
/// Grain table entries per grain table: one table maps 32 MiB of guest.
const GT_BITS: u32 = 9;
const GT_SECTORS: u64 = (4 << GT_BITS) / SECTOR;
const DESCRIPTOR_OFFSET: u64 = 1;
/// Sectors reserved for the embedded descriptor, as qemu and VMware reserve.
const DESCRIPTOR_SECTORS: u64 = 20;
/// Header flags: the newline-detection bytes are valid; a redundant grain directory exists.
const FLAG_NL_DETECT: u32 = 1 << 0;
const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Grain table entries are 32-bit sector numbers: nothing can live past 2 TiB of file.
const MAX_HOST_SECTORS: u64 = 1 << 32;

pub(super) struct VmdkWriter {
    clusters: ClusterFile,
    layout: Layout,
}

impl VmdkWriter {
    pub(super) fn create(path: &Path, size: u64) -> Result<VmdkWriter> {
        let layout = Layout::plan(size.div_ceil(SECTOR));
        if layout.overhead >= MAX_HOST_SECTORS {
            return Err(Error::Usage(format!(
                "{}: a {size}-byte disk is too large for a sparse VMDK (its grain tables \
                 alone would pass the format's 2 TiB file limit); restore it as raw",
                path.display()
            )));
        }
        let geo = Geometry {
            cluster_bits: GRAIN_BITS,
            table_bits: GT_BITS,
            first_data: (layout.overhead / GRAIN_SECTORS) as u32,
            limit: (MAX_HOST_SECTORS / GRAIN_SECTORS) as u32,
        };
        Ok(VmdkWriter {
            clusters: ClusterFile::create(path, size, geo)?,
            layout,
        })
    }
}

impl DiskWriter for VmdkWriter {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.clusters.write_at(offset, data)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let (out, map) = self.clusters.into_parts()?;
        let l = &self.layout;
        for (index, hosts) in map.tables() {
            let gt: Vec<u8> = hosts
                .iter()
                .map(|&h| (u64::from(h) * GRAIN_SECTORS) as u32)
                .flat_map(u32::to_le_bytes)
                .collect();
            for gts in [l.rgt_start, l.gt_start] {
                out.pwrite(&gt, (gts + index * GT_SECTORS) * SECTOR)?;
            }
        }
        for (gd, gts) in [(l.rgd, l.rgt_start), (l.gd, l.gt_start)] {
            out.pwrite(&l.directory(gts), gd * SECTOR)?;
        }
        out.pwrite(&descriptor(&out, l.capacity), DESCRIPTOR_OFFSET * SECTOR)?;
        out.pwrite(&l.header(), 0)?;
        out.set_len(map.data_end() << GRAIN_BITS)?;
        out.sync()
    }
}

/// Where the metadata goes, in sectors.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    capacity: u64,
    tables: u64,
    rgd: u64,
    rgt_start: u64,
    gd: u64,
    gt_start: u64,
    /// Sectors before the first grain: all the metadata, rounded up to a grain.
    overhead: u64,
}

impl Layout {
    fn plan(capacity: u64) -> Layout {
        let tables = capacity.div_ceil(GRAIN_SECTORS << GT_BITS);
        let gd_sectors = (tables * 4).div_ceil(SECTOR);
        let rgd = DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS;
        let rgt_start = rgd + gd_sectors;
        let gd = rgt_start + tables * GT_SECTORS;
        let gt_start = gd + gd_sectors;
        Layout {
            capacity,
            tables,
            rgd,
            rgt_start,
            gd,
            gt_start,
            overhead: (gt_start + tables * GT_SECTORS).next_multiple_of(GRAIN_SECTORS),
        }
    }

    /// A grain directory pointing at every table of the copy starting at `gts`.
    fn directory(&self, gts: u64) -> Vec<u8> {
        (0..self.tables)
            .flat_map(|i| ((gts + i * GT_SECTORS) as u32).to_le_bytes())
            .collect()
    }

    /// The `SparseExtentHeader` (little-endian), one sector.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(SECTOR as usize);
        h.extend_from_slice(b"KDMV");
        h.extend_from_slice(&1u32.to_le_bytes()); // version
        h.extend_from_slice(&(FLAG_NL_DETECT | FLAG_REDUNDANT_GD).to_le_bytes());
        h.extend_from_slice(&self.capacity.to_le_bytes());
        h.extend_from_slice(&GRAIN_SECTORS.to_le_bytes());
        h.extend_from_slice(&DESCRIPTOR_OFFSET.to_le_bytes());
        h.extend_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
        h.extend_from_slice(&(1u32 << GT_BITS).to_le_bytes());
        h.extend_from_slice(&self.rgd.to_le_bytes());
        h.extend_from_slice(&self.gd.to_le_bytes());
        h.extend_from_slice(&self.overhead.to_le_bytes());
        h.push(0); // uncleanShutdown
                   // Newline-detection bytes: a file that went through a text-mode transfer shows it.
        h.extend_from_slice(b"\n \r\n");
        h.extend_from_slice(&0u16.to_le_bytes()); // compressAlgorithm: none
        h.resize(SECTOR as usize, 0);
        h
    }
}

/// The embedded descriptor, zero-padded to its reserved sectors. The extent line names the
/// file as created (restore creates it under its final name in a hidden folder); a renamed
/// monolithicSparse file still opens (the extent is the file itself), as with VMware's own.
fn descriptor(out: &OutFile, capacity: u64) -> Vec<u8> {
    let name: String = out
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    // SCSI (lsilogic) geometry as VMware gives it: 255 heads, 63 sectors per track.
    let cylinders = (capacity / (255 * 63)).max(1);
    let text = format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"monolithicSparse\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"lsilogic\"\n",
        cid = content_id(),
    );
    let mut bytes = text.into_bytes();
    // A file name of a few hundred bytes still fits the 10 KiB reserved.
    bytes.truncate((DESCRIPTOR_SECTORS * SECTOR) as usize);
    bytes.resize((DESCRIPTOR_SECTORS * SECTOR) as usize, 0);
    bytes
}

/// A fresh content id (CID): a snapshot (delta) taken of the restored disk later records
/// it as its parentCID. Random, as VMware's are; never "ffffffff", which means "none".
fn content_id() -> u32 {
    let cid = getrandom::u32().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.subsec_nanos() ^ t.as_secs() as u32
    });
    if cid == u32::MAX {
        1
    } else {
        cid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The headers of `qemu-img create -f vmdk` at 100M and 1T: rgd, gd, overhead.
    #[test]
    fn layout_matches_qemu_img_create() {
        let l = Layout::plan(204_800);
        assert_eq!((l.tables, l.rgd, l.gd, l.overhead), (4, 21, 38, 128));
        let big = Layout::plan((1u64 << 40) / SECTOR);
        assert_eq!(big.tables, 32_768);
        assert_eq!((big.rgd, big.gd, big.overhead), (21, 131_349, 262_784));
    }

    #[test]
    fn header_fields_sit_where_the_specification_puts_them() {
        let l = Layout::plan(204_801);
        let h = l.header();
        assert_eq!(h.len(), 512);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(le32(&h, 4), 1);
        assert_eq!(le32(&h, 8), 3);
        assert_eq!(le64(&h, 12), 204_801);
        assert_eq!(le64(&h, 20), 128);
        assert_eq!((le64(&h, 28), le64(&h, 36)), (1, 20));
        assert_eq!(le32(&h, 44), 512);
        assert_eq!((le64(&h, 48), le64(&h, 56)), (l.rgd, l.gd));
        assert_eq!(le64(&h, 64), l.overhead);
        assert_eq!(&h[72..77], b"\0\n \r\n");
        assert!(h[77..].iter().all(|b| *b == 0));
    }

    #[test]
    fn directory_points_at_consecutive_tables() {
        let l = Layout::plan(3 * 65_536 + 5);
        assert_eq!(l.tables, 4);
        let d = l.directory(100);
        let e: Vec<u32> = d.chunks(4).map(|c| le32(c, 0)).collect();
        assert_eq!(e, vec![100, 104, 108, 112]);
    }
}
