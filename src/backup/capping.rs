//! Keeping the newest restore point contiguous ("capping", Lillibridge et al., FAST'13).
//!
//! With deduplication, each night's new chunks land in new packs while the unchanged ones
//! stay where they were first stored, so after a month one segment of the newest snapshot
//! is spread over dozens of old packs and its restore reads scattered ranges. So, per
//! segment of a backup (16 MiB of disk), the old packs its deduplicated chunks come from are
//! ranked by how many of the segment's bytes each holds; of the packs beyond the first
//! [`Capping::max_packs`], the sparsest are stored again whole, next to the segment's new
//! chunks. A whole-read and a changed-block backup cap alike (the latter on the segments
//! its changes touch). A per-backup budget (a share of the bytes read) bounds what that
//! costs; the index then names two
//! copies, the newer one is what restores read (and what prune keeps), and the old copy
//! becomes garbage for prune. Older snapshots are the ones that read scattered data, as in
//! a reverse-delta scheme.

use crate::Id;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub(super) struct Capping {
    /// Old packs a segment may read from before its chunks in further packs are rewritten.
    pub max_packs: usize,
    /// Bytes that may still be rewritten in this backup.
    budget: AtomicI64,
    /// Index files created at or after this time are this session's: never "old".
    session_start: u64,
    pub rewritten: AtomicU64,
}

/// Packs per segment kept before rewriting (from the fragmentation study, BENCHMARKS.md H).
pub(super) const MAX_PACKS: usize = 3;

impl Capping {
    pub(super) fn new(budget: u64, session_start: u64) -> Capping {
        Capping {
            max_packs: MAX_PACKS,
            budget: AtomicI64::new(budget.min(i64::MAX as u64) as i64),
            session_start,
            rewritten: AtomicU64::new(0),
        }
    }

    /// True once nothing more may be rewritten in this backup.
    pub(super) fn spent(&self) -> bool {
        self.budget.load(Ordering::Relaxed) <= 0
    }

    /// For the data pieces of one segment, each as (length, the pack and index time of the
    /// copy the index has, if any), which to store again.
    pub(super) fn choose(&self, pieces: &[(u64, Option<(Id, u64)>)]) -> Vec<bool> {
        let mut per_pack: HashMap<Id, u64> = HashMap::new();
        for (len, loc) in pieces {
            if let Some((pack, created)) = loc {
                if *created < self.session_start {
                    *per_pack.entry(*pack).or_default() += len;
                }
            }
        }
        let mut out = vec![false; pieces.len()];
        if per_pack.len() <= self.max_packs || self.spent() {
            return out;
        }
        // The sparsest packs first, each one whole or not at all: a pack left with one
        // chunk still costs the restore a read, so the budget buys the most reads saved
        // when it goes to the packs that hold the fewest of the segment's bytes.
        let mut ranked: Vec<(u64, Id)> = per_pack.into_iter().map(|(p, b)| (b, p)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, pack) in ranked.drain(self.max_packs..).rev() {
            let left = self.budget.fetch_sub(bytes as i64, Ordering::Relaxed);
            if left < bytes as i64 {
                self.budget.fetch_add(bytes as i64, Ordering::Relaxed);
                break;
            }
            self.rewritten.fetch_add(bytes, Ordering::Relaxed);
            for (i, (_, loc)) in pieces.iter().enumerate() {
                if loc.is_some_and(|(p, created)| p == pack && created < self.session_start) {
                    out[i] = true;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_beyond_the_first_packs_are_rewritten_within_the_budget() {
        let c = Capping::new(10_000, 100);
        let p = |b: u8| Some((Id([b; 32]), 50));
        let pieces = vec![
            (4000, p(1)),
            (4000, p(1)),
            (3000, p(2)),
            (2000, p(3)),
            (1000, p(4)),
            (500, p(5)),
            (9000, None),
            (700, Some((Id([6; 32]), 200))), // this session's: never
        ];
        let r = c.choose(&pieces);
        assert_eq!(
            r,
            vec![false, false, false, false, true, true, false, false]
        );
        assert_eq!(c.rewritten.load(Ordering::Relaxed), 1500);
        // Room for the sparsest pack only.
        let tight = Capping::new(1200, 100);
        assert_eq!(
            tight.choose(&pieces),
            vec![false, false, false, false, false, true, false, false]
        );
    }
}
