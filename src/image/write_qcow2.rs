//! The qcow2 writer: version 3, 64 KiB clusters, 16-bit refcounts, no compression, no
//! backing file; the layout `qemu-img create -f qcow2` + `convert` would give, except that
//! the tables come after the data.
//!
//! Host cluster 0 is the header; data clusters follow in the order restore first writes
//! them; [`DiskWriter::finish`] appends the L2 tables, the L1 table, the refcount table and
//! the refcount blocks, then writes the header. Every cluster of the file is used exactly
//! once, so every refcount is 1 and every L1/L2 entry carries the COPIED flag, as
//! `qemu-img check` expects of an image without snapshots.

use super::write::{ClusterFile, ClusterMap, DiskWriter, Geometry, OutFile};
use crate::{Error, Result};
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 8-byte entries per L2 table: one L2 table maps 512 MiB of guest.
const L2_BITS: u32 = CLUSTER_BITS - 3;
/// 16-bit refcounts (refcount_order 4): one refcount block counts 2 GiB of host file.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER * 8 / (1 << REFCOUNT_ORDER);
/// L1/L2 entry flag: the cluster's refcount is exactly 1 (written in place, no COW).
const COPIED: u64 = 1 << 63;
const HEADER_LEN: u32 = 104;
/// The largest L1 table qemu opens (QCOW_MAX_L1_SIZE): with 64 KiB clusters, disks up to
/// 2 PiB.
const MAX_L1_BYTES: u64 = 32 << 20;

pub(super) struct Qcow2Writer {
    clusters: ClusterFile,
    /// Guest size in bytes, rounded up to a sector as qemu counts it.
    size: u64,
}

impl Qcow2Writer {
    pub(super) fn create(path: &Path, size: u64) -> Result<Qcow2Writer> {
        if l1_entries(size) * 8 > MAX_L1_BYTES {
            return Err(Error::Usage(format!(
                "{}: a {size}-byte disk is too large for a qcow2 image with 64 KiB clusters \
                 (qemu opens up to 2 PiB); restore it as raw",
                path.display()
            )));
        }
        let geo = Geometry {
            cluster_bits: CLUSTER_BITS,
            table_bits: L2_BITS,
            first_data: 1,
            limit: u32::MAX,
        };
        Ok(Qcow2Writer {
            clusters: ClusterFile::create(path, size, geo)?,
            size: size.next_multiple_of(512),
        })
    }
}

impl DiskWriter for Qcow2Writer {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.clusters.write_at(offset, data)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let (out, map) = self.clusters.into_parts()?;
        let layout = Layout::plan(self.size, map.data_end(), map.table_count());
        let l1 = write_l2_tables(&out, &map, &layout)?;
        out.pwrite(&be_u64s(&l1), layout.l1_start * CLUSTER)?;
        write_refcounts(&out, &layout)?;
        out.pwrite(&header(self.size, &layout), 0)?;
        out.set_len(layout.total * CLUSTER)?;
        out.sync()
    }
}

/// Where the metadata goes, in host clusters. Everything below `total` is in use.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    l2_start: u64,
    l1_start: u64,
    l1_entries: u64,
    refcount_table_start: u64,
    refcount_table_clusters: u64,
    refcount_blocks_start: u64,
    refcount_blocks: u64,
    total: u64,
}

impl Layout {
    /// The metadata after `data_end` clusters of header and data, with `l2_tables` L2
    /// tables. The refcount structures count themselves, so their size is found by
    /// iterating to a fixed point (it only grows, and settles after a step or two).
    fn plan(size: u64, data_end: u64, l2_tables: u64) -> Layout {
        let l1_entries = l1_entries(size);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
        let l2_start = data_end;
        let l1_start = l2_start + l2_tables;
        let refcount_table_start = l1_start + l1_clusters;
        let (mut table, mut blocks) = (0, 0);
        loop {
            let total = refcount_table_start + table + blocks;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER);
            if (need_table, need_blocks) == (table, blocks) {
                break;
            }
            (table, blocks) = (need_table, need_blocks);
        }
        Layout {
            l2_start,
            l1_start,
            l1_entries,
            refcount_table_start,
            refcount_table_clusters: table,
            refcount_blocks_start: refcount_table_start + table,
            refcount_blocks: blocks,
            total: refcount_table_start + table + blocks,
        }
    }
}

/// L1 entries a disk of `size` bytes needs: one per L2 table, 512 MiB each.
fn l1_entries(size: u64) -> u64 {
    size.div_ceil(CLUSTER << L2_BITS)
}

/// Writes one L2 table per table of `map`, in order from `layout.l2_start`; returns the L1
/// table pointing at them.
fn write_l2_tables(out: &OutFile, map: &ClusterMap, layout: &Layout) -> Result<Vec<u64>> {
    let mut l1 = vec![0u64; layout.l1_entries as usize];
    for (k, (index, hosts)) in map.tables().enumerate() {
        let at = layout.l2_start + k as u64;
        let l2: Vec<u64> = hosts
            .iter()
            .map(|&h| match h {
                0 => 0,
                h => (u64::from(h) << CLUSTER_BITS) | COPIED,
            })
            .collect();
        out.pwrite(&be_u64s(&l2), at * CLUSTER)?;
        l1[index as usize] = (at << CLUSTER_BITS) | COPIED;
    }
    Ok(l1)
}

/// Writes the refcount blocks (a 1 for every cluster below `layout.total`) and the
/// refcount table pointing at them.
fn write_refcounts(out: &OutFile, layout: &Layout) -> Result<()> {
    let full_block: Vec<u8> = 1u16.to_be_bytes().repeat(REFCOUNTS_PER_BLOCK as usize);
    let mut table = Vec::with_capacity(layout.refcount_blocks as usize);
    for b in 0..layout.refcount_blocks {
        let at = layout.refcount_blocks_start + b;
        let counted = (layout.total - b * REFCOUNTS_PER_BLOCK).min(REFCOUNTS_PER_BLOCK);
        out.pwrite(&full_block[..counted as usize * 2], at * CLUSTER)?;
        table.push(at << CLUSTER_BITS);
    }
    out.pwrite(&be_u64s(&table), layout.refcount_table_start * CLUSTER)
}

/// The version 3 header (big-endian), followed by the end-of-extensions marker (zeros).
fn header(size: u64, layout: &Layout) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize + 8);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&(layout.l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&(layout.l1_start * CLUSTER).to_be_bytes());
    h.extend_from_slice(&(layout.refcount_table_start * CLUSTER).to_be_bytes());
    h.extend_from_slice(&(layout.refcount_table_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_LEN as usize);
    h.extend_from_slice(&[0; 8]); // header extension type 0: end of extensions
    h
}

fn be_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn be64(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn refcounts_cover_every_cluster_including_themselves() {
        for data_end in [1, 2, 1000, 32_760, 32_768, 65_530, 10_000_000] {
            for l2 in [0, 1, 3, 2048] {
                let size = 1u64 << 40;
                let l = Layout::plan(size, data_end, l2);
                assert_eq!(l.l1_entries, 2048);
                assert_eq!(l.l1_start, data_end + l2);
                assert!(l.refcount_blocks * REFCOUNTS_PER_BLOCK >= l.total, "{l:?}");
                // Not one block more than needed.
                assert!(
                    (l.refcount_blocks - 1) * REFCOUNTS_PER_BLOCK < l.total,
                    "{l:?}"
                );
                assert!(l.refcount_table_clusters * CLUSTER >= l.refcount_blocks * 8);
                assert_eq!(
                    l.total,
                    l.refcount_blocks_start + l.refcount_blocks,
                    "{l:?}"
                );
            }
        }
    }

    #[test]
    fn refcount_blocks_grow_when_they_tip_over_a_block() {
        // 32766 clusters + table + 1 block = 32768 fit in one block; one more does not.
        let fits = Layout::plan(512, 32_766 - 1, 0);
        assert_eq!((fits.total, fits.refcount_blocks), (32_768, 1));
        let tips = Layout::plan(512, 32_766, 0);
        assert_eq!((tips.total, tips.refcount_blocks), (32_770, 2));
    }

    #[test]
    fn header_fields_sit_where_the_specification_puts_them() {
        let l = Layout::plan(3 << 30, 10, 2);
        let h = header(3 << 30, &l);
        assert_eq!(h.len(), 112);
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(be32(&h, 4), 3);
        assert_eq!(be32(&h, 20), 16);
        assert_eq!(be64(&h, 24), 3 << 30);
        assert_eq!(be32(&h, 36), 6);
        assert_eq!(be64(&h, 40), 12 * CLUSTER);
        assert_eq!(be64(&h, 48), 13 * CLUSTER);
        assert_eq!(be32(&h, 56), 1);
        assert_eq!(be64(&h, 72), 0);
        assert_eq!(be32(&h, 96), 4);
        assert_eq!(be32(&h, 100), 104);
        assert_eq!(&h[104..], &[0; 8]);
    }
}
