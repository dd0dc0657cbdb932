//! Directories: the `$I30` filename index, a B+tree whose root node sits in
//! `$INDEX_ROOT` and whose other nodes are "INDX" blocks of `$INDEX_ALLOCATION`.
//!
//! Every entry, in internal nodes as well as leaves, names a file; an entry with the
//! sub-node flag is preceded (in name order) by the whole subtree at the VCN stored in its
//! last eight bytes. The walk is in order, depth-limited, refuses a block reached twice (a
//! loop) or marked free in the index's `$BITMAP`, and caps the entries of one directory.
//! Index VCNs count clusters when blocks are at least a cluster, else 512-byte units.

use super::attr::Data;
use super::inode::{parse_file_name, value, Inode, AT_BITMAP, AT_INDEX_ALLOCATION, AT_INDEX_ROOT};
use super::record::apply_fixups;
use super::Ntfs;
use crate::fs::Le;
use crate::{Error, Result};
use std::collections::HashSet;

/// Levels below the root node (real trees have 2 to 4).
const MAX_DEPTH: usize = 32;
/// Entries of one directory.
pub const MAX_ENTRIES: usize = 1 << 20;

const ENTRY_SUBNODE: u16 = 0x01;
const ENTRY_LAST: u16 = 0x02;
/// Key file-attribute flag: the file is a directory.
const FN_DIRECTORY: u32 = 0x1000_0000;

/// One entry of a filename index.
#[derive(Clone, Debug)]
pub struct IdxEntry {
    /// Reference of the file (record number and sequence).
    pub mref: u64,
    pub namespace: u8,
    pub name: Vec<u8>,
    /// From the key's attributes: only a fallback when the file's record is unreadable.
    pub is_dir: bool,
}

struct Walk<'a> {
    fs: &'a Ntfs,
    what: String,
    alloc: Option<&'a Data>,
    bitmap: Option<Vec<u8>>,
    block_size: u64,
    vcn_unit: u64,
    visited: HashSet<u64>,
    out: Vec<IdxEntry>,
}

impl Ntfs {
    /// Every entry of directory `dir`'s `$I30` index, DOS names included, in index order.
    pub fn index_entries(&self, dir: &Inode) -> Result<Vec<IdxEntry>> {
        let what = format!("NTFS: directory (record {}) $I30 index", dir.ino);
        let root = dir
            .find(AT_INDEX_ROOT, b"$I30")
            .ok_or_else(|| Error::Guest(format!("NTFS: record {} is not a directory", dir.ino)))?;
        let cs = self.geo.cluster_size;
        let root = value(&*self.dev, cs, root, 1 << 16, &what)?;
        let le = Le::new(&root, &what);
        let block_size = le.u32(8)? as u64;
        let alloc = dir.find(AT_INDEX_ALLOCATION, b"$I30");
        if alloc.is_some()
            && (!(512..=65536).contains(&block_size) || !block_size.is_power_of_two())
        {
            return Err(Error::Guest(format!(
                "{what}: index blocks of {block_size} bytes"
            )));
        }
        let bitmap = match dir.find(AT_BITMAP, b"$I30") {
            Some(b) => Some(value(&*self.dev, cs, b, 1 << 20, &what)?),
            None => None,
        };
        let mut w = Walk {
            fs: self,
            alloc,
            bitmap,
            block_size,
            vcn_unit: if block_size >= cs { cs } else { 512 },
            visited: HashSet::new(),
            out: Vec::new(),
            what: what.clone(),
        };
        let hdr = le.bytes(0x10, root.len().saturating_sub(0x10))?;
        w.node(hdr, 0)?;
        Ok(w.out)
    }
}

impl Walk<'_> {
    /// Walks the node whose index header starts `hdr`.
    fn node(&mut self, hdr: &[u8], depth: usize) -> Result<()> {
        let what = self.what.clone();
        let le = Le::new(hdr, &what);
        let first = le.u32(0)? as usize;
        let end = le.u32(4)? as usize;
        if end > hdr.len() || first >= end {
            return Err(Error::Guest(format!(
                "{what}: node entries at {first}..{end} outside its {} bytes",
                hdr.len()
            )));
        }
        let mut at = first;
        // Each entry is at least 16 bytes, so this ends within the node.
        loop {
            if at + 16 > end {
                return Err(Error::Guest(format!(
                    "{what}: node ends without a last entry"
                )));
            }
            let len = le.u16(at + 8)? as usize;
            let key_len = le.u16(at + 10)? as usize;
            let flags = le.u16(at + 12)?;
            if len < 16 || at + len > end {
                return Err(Error::Guest(format!(
                    "{what}: entry at byte {at} has length {len}"
                )));
            }
            if flags & ENTRY_SUBNODE != 0 {
                if len < 24 {
                    return Err(Error::Guest(format!(
                        "{what}: entry at byte {at} too short for its sub-node"
                    )));
                }
                self.child(le.u64(at + len - 8)?, depth + 1)?;
            }
            if flags & ENTRY_LAST != 0 {
                return Ok(());
            }
            let key = le.bytes(at + 16, key_len)?;
            if key_len > len - 16 {
                return Err(Error::Guest(format!(
                    "{what}: key at byte {at} runs past its entry"
                )));
            }
            let f = parse_file_name(key, &what)?;
            let attrs = Le::new(key, &what).u32(0x38)?;
            if self.out.len() >= MAX_ENTRIES {
                return Err(Error::Guest(format!(
                    "{what}: more than {MAX_ENTRIES} entries"
                )));
            }
            self.out.push(IdxEntry {
                mref: le.u64(at)?,
                namespace: f.namespace,
                name: f.name,
                is_dir: attrs & FN_DIRECTORY != 0,
            });
            at += len;
        }
    }

    /// Reads the index block at `vcn` and walks it.
    fn child(&mut self, vcn: u64, depth: usize) -> Result<()> {
        let what = self.what.clone();
        if depth > MAX_DEPTH {
            return Err(Error::Guest(format!(
                "{what}: deeper than {MAX_DEPTH} levels"
            )));
        }
        let Some(alloc) = self.alloc else {
            return Err(Error::Guest(format!(
                "{what}: sub-node without $INDEX_ALLOCATION"
            )));
        };
        if !self.visited.insert(vcn) {
            return Err(Error::Guest(format!(
                "{what}: index block at VCN {vcn} reached twice (a loop)"
            )));
        }
        let off = vcn
            .checked_mul(self.vcn_unit)
            .filter(|o| o % self.block_size == 0)
            .ok_or_else(|| Error::Guest(format!("{what}: bad sub-node VCN {vcn}")))?;
        let block = off / self.block_size;
        if let Some(bm) = &self.bitmap {
            let used = bm
                .get((block / 8) as usize)
                .is_some_and(|b| b & (1 << (block % 8)) != 0);
            if !used {
                return Err(Error::Guest(format!(
                    "{what}: sub-node VCN {vcn} is a free index block"
                )));
            }
        }
        let mut buf = vec![0u8; self.block_size as usize];
        let cs = self.fs.geo.cluster_size;
        if alloc.read(&*self.fs.dev, cs, off, &mut buf, &what)? != buf.len() {
            return Err(Error::Guest(format!(
                "{what}: sub-node VCN {vcn} lies past $INDEX_ALLOCATION's end"
            )));
        }
        let bw = format!("{what}: index block at VCN {vcn}");
        apply_fixups(&mut buf, b"INDX", &bw)?;
        let le = Le::new(&buf, &bw);
        if le.u64(0x10)? != vcn {
            return Err(Error::Guest(format!(
                "{bw}: says it is at VCN {}",
                le.u64(0x10)?
            )));
        }
        self.node(le.bytes(0x18, buf.len() - 0x18)?, depth)
    }
}
