//! The file allocation table: one entry per cluster saying which cluster comes next in its
//! file, or that it is free, bad, or the last one.
//!
//! Entries are 12 bits (two packed into three bytes, little-endian), 16 bits, or 32 bits of
//! which FAT32 uses the low 28. The table is read on demand in 64 KiB blocks kept in a small
//! cache, so a volume with a 1 GiB FAT costs no more memory than a floppy. A chain is walked
//! under two caps — never more clusters than the volume has, never more than the caller
//! asked for — and checked afterwards for a cluster used twice, which is how a loop shows.

use super::bpb::{FatType, Geometry};
use crate::fs::{read_vec, Dev};
use crate::{Error, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Bytes of the FAT read at once.
const BLOCK: u64 = 64 << 10;
/// Cached FAT blocks (16 MiB): when full the cache starts over.
const CACHE_BLOCKS: usize = 256;

/// A run of consecutive clusters: `len` clusters from `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u32,
    pub len: u32,
}

/// What a FAT entry says about the cluster after this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Cluster(u32),
    End,
    Free,
    Bad,
    /// A value that is none of the above (a cluster number outside the volume, 1, or a
    /// reserved value).
    Invalid(u32),
}

/// How far to follow a chain.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// A file: exactly this many clusters (those its size needs); the chain must hold them,
    /// and whatever follows is not looked at.
    Clusters(u64),
    /// A directory: to its end, which must come within this many clusters.
    ToEnd(u64),
}

pub struct Table {
    dev: Dev,
    fat_type: FatType,
    offset: u64,
    used: u64,
    clusters: u64,
    cache: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl Table {
    pub fn new(dev: Dev, geo: &Geometry) -> Table {
        Table {
            dev,
            fat_type: geo.fat_type,
            offset: geo.fat_offset,
            used: geo.fat_used,
            clusters: geo.clusters,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn read_block(&self, idx: u64) -> Result<Vec<u8>> {
        let start = idx * BLOCK;
        let len = BLOCK.min(self.used.saturating_sub(start));
        read_vec(self.dev.as_ref(), self.offset + start, len, BLOCK, "FAT")
    }

    fn block(&self, idx: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.lock().get(&idx) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.read_block(idx)?);
        let mut cache = self.lock();
        if cache.len() >= CACHE_BLOCKS {
            cache.clear();
        }
        cache.insert(idx, b.clone());
        Ok(b)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<u8>>>> {
        // A panic elsewhere cannot leave the map half-updated: take it anyway.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The byte at `at` of the FAT (inside `0..used`, checked by the callers).
    fn byte(&self, at: u64) -> Result<u8> {
        let b = self.block(at / BLOCK)?;
        b.get((at % BLOCK) as usize)
            .copied()
            .ok_or_else(|| Error::Guest(format!("FAT: byte {at} lies outside the table")))
    }

    /// The raw entry of cluster `n` (0 ≤ n < clusters + 2).
    pub fn raw(&self, n: u32) -> Result<u32> {
        let n64 = u64::from(n);
        if n64 >= self.clusters + 2 {
            return Err(Error::Guest(format!(
                "FAT: cluster {n} is outside the {} clusters",
                self.clusters
            )));
        }
        Ok(match self.fat_type {
            FatType::Fat12 => {
                let at = n64 + n64 / 2;
                let v = u16::from_le_bytes([self.byte(at)?, self.byte(at + 1)?]);
                u32::from(if n % 2 == 0 { v & 0x0FFF } else { v >> 4 })
            }
            FatType::Fat16 => {
                let at = n64 * 2;
                u32::from(u16::from_le_bytes([self.byte(at)?, self.byte(at + 1)?]))
            }
            FatType::Fat32 => {
                let at = n64 * 4;
                let b = self.block(at / BLOCK)?;
                let i = (at % BLOCK) as usize;
                let s = b.get(i..i + 4).ok_or_else(|| {
                    Error::Guest(format!("FAT: entry of cluster {n} lies outside the table"))
                })?;
                u32::from_le_bytes([s[0], s[1], s[2], s[3]]) & 0x0FFF_FFFF
            }
        })
    }

    fn classify(&self, v: u32) -> Next {
        let (bad, end) = match self.fat_type {
            FatType::Fat12 => (0xFF7, 0xFF8),
            FatType::Fat16 => (0xFFF7, 0xFFF8),
            FatType::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        match v {
            0 => Next::Free,
            v if v >= end => Next::End,
            v if v == bad => Next::Bad,
            v if v >= 2 && u64::from(v) < self.clusters + 2 => Next::Cluster(v),
            v => Next::Invalid(v),
        }
    }

    pub fn next(&self, n: u32) -> Result<Next> {
        Ok(self.classify(self.raw(n)?))
    }

    /// FAT16/32 keep two flags in the entry of cluster 1: "cleanly unmounted" and "no disk
    /// error seen"; a cleared bit means the condition did not hold. FAT12 has no flags.
    pub fn flags(&self) -> Result<(bool, bool)> {
        let (clean, no_error) = match self.fat_type {
            FatType::Fat12 => return Ok((true, true)),
            FatType::Fat16 => (0x8000, 0x4000),
            FatType::Fat32 => (0x0800_0000, 0x0400_0000),
        };
        let v = self.raw(1)?;
        Ok((v & clean != 0, v & no_error != 0))
    }

    /// The runs of the chain that starts at `first`, followed as `want` says; `what` names
    /// the owner in errors.
    pub fn chain(&self, first: u32, want: Want, what: &str) -> Result<Vec<Run>> {
        let err = |m: String| Error::Guest(format!("FAT: {what}: {m}"));
        let (limit, exact) = match want {
            Want::Clusters(n) => (n, true),
            Want::ToEnd(n) => (n, false),
        };
        if exact && limit > self.clusters {
            return Err(err(format!(
                "its size needs {limit} clusters, more than the volume's {}",
                self.clusters
            )));
        }
        let limit = limit.min(self.clusters);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if first < 2 || u64::from(first) >= self.clusters + 2 {
            return Err(err(format!(
                "the first cluster {first} is outside the {} clusters",
                self.clusters
            )));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut cur = first;
        let mut count = 0u64;
        loop {
            count += 1;
            match runs.last_mut() {
                Some(r) if r.first.checked_add(r.len) == Some(cur) => r.len += 1,
                _ => runs.push(Run { first: cur, len: 1 }),
            }
            if exact && count == limit {
                break;
            }
            match self.next(cur)? {
                Next::Cluster(n) if count < limit => cur = n,
                Next::Cluster(_) if limit == self.clusters => {
                    return Err(err(format!(
                        "the cluster chain is longer than the {} clusters of the volume: it \
                         loops",
                        self.clusters
                    )))
                }
                Next::Cluster(_) => {
                    return Err(err(format!(
                        "the cluster chain is longer than {limit} clusters"
                    )))
                }
                Next::End if exact => {
                    return Err(err(format!(
                        "the cluster chain ends after {count} of the {limit} clusters its \
                         size needs"
                    )))
                }
                Next::End => break,
                Next::Free => {
                    return Err(err(format!(
                        "the cluster chain runs into free cluster {cur}"
                    )))
                }
                Next::Bad => {
                    return Err(err(format!(
                        "the cluster chain runs into bad cluster {cur}"
                    )))
                }
                Next::Invalid(v) => {
                    return Err(err(format!(
                        "cluster {cur} is followed by {v:#x}, not a cluster of the volume"
                    )))
                }
            }
        }
        check_disjoint(&runs)
            .map_err(|c| err(format!("the cluster chain loops at cluster {c}")))?;
        Ok(runs)
    }

    /// Byte ranges of the data region whose clusters the FAT marks in use (neither free nor
    /// bad), merged, as volume offsets.
    pub fn used(&self, geo: &Geometry) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut add = |c: u32| {
            let start = geo.cluster_offset(c);
            let end = start + geo.cluster_size;
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        };
        match self.fat_type {
            FatType::Fat12 => {
                for c in 2..(self.clusters + 2) as u32 {
                    if !matches!(self.next(c)?, Next::Free | Next::Bad) {
                        add(c);
                    }
                }
            }
            FatType::Fat16 | FatType::Fat32 => {
                // Whole blocks, read past the cache: a scan would only evict it.
                let width = if self.fat_type == FatType::Fat16 {
                    2
                } else {
                    4
                };
                let mut idx = 0u64;
                while idx * BLOCK < self.used {
                    let b = self.read_block(idx)?;
                    for (i, e) in b.chunks_exact(width).enumerate() {
                        let c = (idx * BLOCK / width as u64) + i as u64;
                        if c < 2 || c >= self.clusters + 2 {
                            continue;
                        }
                        let v = match e {
                            [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
                            [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]) & 0x0FFF_FFFF,
                            _ => 0,
                        };
                        if !matches!(self.classify(v), Next::Free | Next::Bad) {
                            add(c as u32);
                        }
                    }
                    idx += 1;
                }
            }
        }
        Ok(out)
    }
}

/// Err(cluster) if two runs share a cluster.
fn check_disjoint(runs: &[Run]) -> std::result::Result<(), u32> {
    if runs.len() < 2 {
        return Ok(());
    }
    let mut sorted: Vec<Run> = runs.to_vec();
    sorted.sort_unstable_by_key(|r| r.first);
    for w in sorted.windows(2) {
        if let [a, b] = w {
            if u64::from(a.first) + u64::from(a.len) > u64::from(b.first) {
                return Err(b.first);
            }
        }
    }
    Ok(())
}
