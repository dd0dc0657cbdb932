//! Planning: which copy of each needed blob is kept, and what becomes of each pack.

use crate::crash_point;
use crate::repo::envelope::{FileHeader, FileKind};
use crate::repo::index::IndexFile;
use crate::repo::pack::{pack_name, reseal_blob, PackEntry};
use crate::repo::packer::Packer;
use crate::repo::Repository;
use crate::{Error, Id, Result};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Blobs resealed side by side before they are packed: about 8 MiB of 32 KiB chunks, so
/// a batch adds little to the pack already held in memory.
const RESEAL_BATCH: usize = 256;

/// What prune does with one pack.
#[derive(Default)]
pub struct PackPlan {
    pub salt: [u8; 32],
    pub keep: Vec<PackEntry>,
    /// Offsets of the entries already counted, so each blob counts once.
    seen: HashSet<u32>,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// The plan for every pack, from every index file and the blobs in use.
pub struct Plan {
    /// Index files by name, as read.
    pub index: Vec<(String, IndexFile)>,
    pub packs: HashMap<Id, PackPlan>,
    pub on_disk: HashMap<Id, u64>,
    /// Packs with nothing in use.
    pub delete: Vec<Id>,
    /// Packs whose unused share exceeds the limit: their used blobs move, then they go.
    pub repack: Vec<Id>,
    /// Packs kept as they are.
    pub keep: Vec<Id>,
    /// Packs in `data/` that no index file names.
    pub unreferenced: Vec<Id>,
}

impl Plan {
    /// Reads every index file and decides. Of a blob stored twice, the copy named by the
    /// newest index file is the one kept (a backup stores a copy again next to new data so
    /// the newest snapshot reads contiguously; the old copy becomes garbage); ties keep
    /// the first met.
    pub fn make(repo: &Repository, used: &HashSet<Id>, max_unused: f64) -> Result<Plan> {
        let on_disk = repo.list_packs()?;
        let mut index = Vec::new();
        for name in repo.index_files()? {
            let idx = repo.read_index(&name)?;
            index.push((name, idx));
        }
        let winners = winners(index.iter().map(|(_, i)| i), used);
        let mut packs: HashMap<Id, PackPlan> = HashMap::new();
        let mut unplaced: HashSet<Id> = used.clone();
        for (_, idx) in &index {
            for p in &idx.packs {
                let plan = packs.entry(p.pack).or_default();
                plan.salt = p.salt;
                for e in &p.entries {
                    // An interrupted prune leaves two index files naming the same blob.
                    if !plan.seen.insert(e.offset) {
                        continue;
                    }
                    plan.total_bytes += e.length as u64;
                    let wins = winners
                        .get(&e.id)
                        .is_some_and(|w| (w.1, w.2) == (p.pack, e.offset));
                    if wins && unplaced.remove(&e.id) {
                        plan.used_bytes += e.length as u64;
                        plan.keep.push(*e);
                    }
                }
            }
        }
        if let Some(id) = unplaced.iter().next() {
            return Err(Error::Other(format!(
                "{} needed blobs (e.g. {}) vanished from the index while prune read it; \
                 nothing was deleted",
                unplaced.len(),
                id.short()
            )));
        }
        let (mut delete, mut repack, mut keep) = (Vec::new(), Vec::new(), Vec::new());
        // Packs that hold needed blobs, the most unused first: repacked in that order until
        // what stays unused is at most `max_unused` of the bytes in use, the way restic's
        // --max-unused works. Each byte copied then frees the most: a pack 90 % unused
        // costs a tenth of its size to reclaim, one 10 % unused nine tenths.
        let mut partial = Vec::new();
        let (mut in_use, mut unused) = (0u64, 0u64);
        for (id, plan) in &packs {
            if plan.keep.is_empty() {
                delete.push(*id);
            } else if !on_disk.contains_key(id) {
                return Err(Error::Other(format!(
                    "pack {} holds needed blobs but is missing; prune stops. Run `cairn check`",
                    pack_name(id)
                )));
            } else {
                let free = plan.total_bytes.saturating_sub(plan.used_bytes);
                in_use += plan.used_bytes;
                unused += free;
                partial.push((free as f64 / plan.total_bytes.max(1) as f64, *id, free));
            }
        }
        for (id, again) in to_repack(partial, in_use, unused, max_unused) {
            match again {
                true => repack.push(id),
                false => keep.push(id),
            }
        }
        let mut unreferenced: Vec<Id> = on_disk
            .keys()
            .filter(|p| !packs.contains_key(p))
            .copied()
            .collect();
        delete.sort();
        repack.sort();
        keep.sort();
        unreferenced.sort();
        Ok(Plan {
            index,
            packs,
            on_disk,
            delete,
            repack,
            keep,
            unreferenced,
        })
    }

    /// Moves the used blobs of the packs to repack into new packs (verified and resealed,
    /// still compressed as they were) and indexes them; returns the new index files.
    pub fn repack(&self, repo: &Repository, quiet: bool) -> Result<(Vec<String>, usize)> {
        let bytes_total: u64 = self.repack.iter().map(|p| self.packs[p].used_bytes).sum();
        let bar = crate::progress::bytes_bar(bytes_total, "repack", quiet);
        let mut written = Vec::new();
        let mut packer = Packer::new(repo);
        let new = packer.sealer().clone();
        for (n, pack) in self.repack.iter().enumerate() {
            let bytes = repo.backend.get(&pack_name(pack))?;
            // Only the header, for the pack's key: the whole pack is not hashed against its
            // name, since each blob kept is checked by itself below (it must open under
            // the pack's key with its id bound), and the blobs not kept are dropped,
            // damaged or not. That hash was a quarter of prune's CPU on the corpus
            // (BENCHMARKS.md K2).
            let header = FileHeader::decode(FileKind::Pack, &bytes, &repo.keys, &pack_name(pack))?;
            let old = header.sealer(&repo.keys);
            // Opening, verifying and sealing again is nearly all of a repack's work, and
            // each blob is independent: a batch at a time on every core, then packed in
            // order (BENCHMARKS.md K).
            for batch in self.packs[pack].keep.chunks(RESEAL_BATCH) {
                let blobs = batch
                    .par_iter()
                    .map(|e| {
                        let at = e.offset as usize;
                        let stored = bytes.get(at..at + e.length as usize).ok_or_else(|| {
                            Error::corrupt(
                                pack_name(pack),
                                format!(
                                    "the index places blob {} past the pack's end; run `cairn repair index`",
                                    e.id.short()
                                ),
                            )
                        })?;
                        reseal_blob(&old, &new, e, stored, pack)
                    })
                    .collect::<Result<Vec<_>>>()?;
                for (e, blob) in batch.iter().zip(&blobs) {
                    if let Some(w) = packer.add(blob)? {
                        written.push(w.name);
                    }
                    bar.inc(e.length as u64);
                }
            }
            if n == 0 {
                crash_point("repack");
            }
        }
        if let Some(w) = packer.finish()? {
            written.push(w.name);
        }
        bar.finish_and_clear();
        Ok((written, packer.packs_written))
    }
}

/// Which of the packs that hold needed blobs, each as (unused share, id, unused bytes), to
/// repack: the most unused first, while more than `max_unused` of the `in_use` bytes would
/// stay unused.
fn to_repack(
    mut partial: Vec<(f64, Id, u64)>,
    in_use: u64,
    mut unused: u64,
    max_unused: f64,
) -> Vec<(Id, bool)> {
    partial.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = Vec::with_capacity(partial.len());
    for (share, id, free) in partial {
        let again = share > 0.0 && unused as f64 > max_unused * in_use as f64;
        if again {
            unused -= free;
        }
        out.push((id, again));
    }
    out
}

/// For each blob in `used`: (index time, pack, offset) of the copy to keep.
pub fn winners<'a>(
    index: impl Iterator<Item = &'a IndexFile>,
    used: &HashSet<Id>,
) -> HashMap<Id, (u64, Id, u32)> {
    let mut w: HashMap<Id, (u64, Id, u32)> = HashMap::with_capacity(used.len());
    for idx in index {
        for p in &idx.packs {
            for e in &p.entries {
                if !used.contains(&e.id) {
                    continue;
                }
                let cur = w.entry(e.id).or_insert((idx.created, p.pack, e.offset));
                if idx.created > cur.0 {
                    *cur = (idx.created, p.pack, e.offset);
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_unused_packs_go_first_until_the_rest_is_within_the_limit() {
        let p = |b: u8| Id([b; 32]);
        // 1000 bytes in use; unused: 90 + 40 + 10 + 5 + 0 = 145.
        let partial = || {
            vec![
                (0.10, p(1), 10),
                (0.90, p(2), 90),
                (0.40, p(3), 40),
                (0.05, p(4), 5),
                (0.0, p(5), 0),
            ]
        };
        let chosen = |max: f64| -> Vec<u8> {
            let mut v: Vec<u8> = to_repack(partial(), 1000, 145, max)
                .into_iter()
                .filter(|x| x.1)
                .map(|x| x.0 .0[0])
                .collect();
            v.sort();
            v
        };
        assert_eq!(chosen(0.05), vec![2, 3]); // 145 → 55 → 15 ≤ 50
        assert_eq!(chosen(0.10), vec![2]); // 145 → 55 ≤ 100
        assert_eq!(chosen(0.0), vec![1, 2, 3, 4]); // every pack with anything unused
        assert_eq!(chosen(f64::INFINITY), Vec::<u8>::new());
        assert_eq!(chosen(0.5), Vec::<u8>::new());
    }
}
