//! Cutting one disk segment into pieces: holes (unallocated or all-zero) and data chunks.
//!
//! A disk is cut into fixed, aligned segments (the config's `segment_size`); a chunk never
//! crosses a segment edge, so segments chunk independently and in parallel, and a change
//! only moves cut points inside its own segment. Inside a segment:
//!
//! * unallocated ranges (source holes) are holes;
//! * all-zero runs are holes too: for FastCDC, 4 KiB-aligned runs of at least
//!   `max(min_size, 4 KiB)`; for the fixed chunker, whole chunks of zeros;
//! * the remaining data runs are cut by FastCDC v2020 (seeded by the repository key) or at
//!   fixed, disk-aligned offsets.
//!
//! The cut points are part of the repository format: the `fastcdc` crate is pinned exactly
//! and `known_cut_points` below fails if they ever move.

use crate::repo::config::{ChunkerKind, ChunkerParams};
use std::ops::Range;

/// Zero detection works on blocks of this size, aligned to the disk offset.
pub const ZERO_BLOCK: usize = 4096;

/// One piece of a segment, in order; offsets are relative to the segment start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub len: usize,
    pub data: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    params: ChunkerParams,
    seed: u64,
}

/// True if every byte is zero; word-at-a-time so it runs near memory speed.
pub fn is_zero(b: &[u8]) -> bool {
    let (pre, words, post) = unsafe { b.align_to::<u128>() };
    pre.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0) && words.iter().all(|&w| w == 0)
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Chunker {
        Chunker { params, seed }
    }

    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Splits a segment. `data` is the whole segment (unallocated ranges must read as
    /// zeros); `allocated` lists its allocated ranges, sorted and disjoint. The pieces cover
    /// `0..data.len()` exactly, and adjacent holes are merged.
    pub fn split(&self, data: &[u8], allocated: &[Range<usize>]) -> Vec<Piece> {
        self.split_at(data, allocated, 0)
    }

    /// [`Chunker::split`] of bytes that start at disk offset `base`: zero blocks stay
    /// aligned to the disk, so a window re-chunked around a change (starting anywhere)
    /// cuts exactly where chunking its whole segment would. The fixed chunker needs `base`
    /// to be a multiple of its chunk size.
    pub fn split_at(&self, data: &[u8], allocated: &[Range<usize>], base: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        match self.params.kind {
            ChunkerKind::Fixed => self.split_fixed(data, allocated, &mut out),
            ChunkerKind::FastcdcV2020 => {
                let mut pos = 0;
                for run in self.data_runs(data, allocated, base) {
                    push_hole(&mut out, pos, run.start - pos);
                    self.cut_cdc(&data[run.clone()], run.start, &mut out);
                    pos = run.end;
                }
                push_hole(&mut out, pos, data.len() - pos);
            }
        }
        out
    }

    /// The ranges holding data: with cut rule 2, the whole buffer with its long zero runs
    /// taken out (unallocated ranges read as zeros, and are only known to be zero without
    /// looking); with rule 1, the allocated ranges with their long zero runs taken out.
    fn data_runs(&self, data: &[u8], allocated: &[Range<usize>], base: u64) -> Vec<Range<usize>> {
        if self.params.cut_rule >= 2 {
            let whole = 0..data.len();
            return self.zero_runs_out(data, std::slice::from_ref(&whole), Some(allocated), base);
        }
        self.zero_runs_out(data, allocated, None, base)
    }

    /// `ranges` with their runs of at least `zero_min` disk-aligned zero blocks taken out.
    /// `known` lists the allocated ranges when blocks outside them are zero without a look.
    fn zero_runs_out(
        &self,
        data: &[u8],
        allocated: &[Range<usize>],
        known: Option<&[Range<usize>]>,
        base: u64,
    ) -> Vec<Range<usize>> {
        let mut k = 0;
        let mut zero = |b: usize| -> bool {
            if let Some(alloc) = known {
                while k < alloc.len() && alloc[k].end <= b {
                    k += 1;
                }
                let touches = k < alloc.len() && alloc[k].start < b + ZERO_BLOCK;
                if !touches {
                    return true;
                }
            }
            is_zero(&data[b..b + ZERO_BLOCK])
        };
        // Blocks are aligned to the disk: block starts are the offsets p with
        // (base + p) % ZERO_BLOCK == 0.
        let shift = (base % ZERO_BLOCK as u64) as usize;
        let first_block = |at: usize| (at + shift).next_multiple_of(ZERO_BLOCK) - shift;
        let zero_min = (self.params.min_size as usize)
            .max(ZERO_BLOCK)
            .next_multiple_of(ZERO_BLOCK);
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut push = |r: Range<usize>| {
            if r.is_empty() {
                return;
            }
            match runs.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => runs.push(r),
            }
        };
        for a in allocated {
            let mut data_start = a.start;
            // Blocks aligned to ZERO_BLOCK; a partial first or last block is never a hole.
            let mut b = first_block(a.start);
            let mut zero_start: Option<usize> = None;
            while b + ZERO_BLOCK <= a.end {
                if zero(b) {
                    zero_start.get_or_insert(b);
                } else if let Some(z) = zero_start.take() {
                    if b - z >= zero_min {
                        push(data_start..z);
                        data_start = b;
                    }
                }
                b += ZERO_BLOCK;
            }
            if let Some(z) = zero_start {
                if b - z >= zero_min {
                    push(data_start..z);
                    data_start = b;
                }
            }
            push(data_start..a.end);
        }
        runs
    }

    fn cut_cdc(&self, run: &[u8], base: usize, out: &mut Vec<Piece>) {
        let p = &self.params;
        let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
            run,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            fastcdc::v2020::Normalization::Level1,
            self.seed,
        );
        for c in cdc {
            out.push(Piece {
                offset: base + c.offset,
                len: c.length,
                data: true,
            });
        }
    }

    fn split_fixed(&self, data: &[u8], allocated: &[Range<usize>], out: &mut Vec<Piece>) {
        let size = self.params.avg_size as usize;
        let mut ai = 0;
        let mut off = 0;
        while off < data.len() {
            let end = (off + size).min(data.len());
            while ai < allocated.len() && allocated[ai].end <= off {
                ai += 1;
            }
            let touches = ai < allocated.len() && allocated[ai].start < end;
            if touches && !is_zero(&data[off..end]) {
                out.push(Piece {
                    offset: off,
                    len: end - off,
                    data: true,
                });
            } else {
                push_hole(out, off, end - off);
            }
            off = end;
        }
    }
}

fn push_hole(out: &mut Vec<Piece>, offset: usize, len: usize) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if !last.data && last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    out.push(Piece {
        offset,
        len,
        data: false,
    });
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64*), independent of any crate.
    pub fn noise(len: usize, mut s: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            v.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn cdc(avg: u32, seed: u64) -> Chunker {
        let mut p = ChunkerParams::fastcdc(avg);
        p.segment_size = 1 << 20;
        Chunker::new(p, seed)
    }

    fn check_cover(pieces: &[Piece], len: usize) {
        let mut pos = 0;
        for p in pieces {
            assert_eq!(p.offset, pos);
            assert!(p.len > 0);
            pos += p.len;
        }
        assert_eq!(pos, len);
    }

    #[test]
    fn known_cut_points() {
        // If this fails, the fastcdc crate changed its cut points: that changes the
        // repository format (dedup against old snapshots breaks). Do not update the
        // numbers without a format version bump.
        let data = noise(512 * 1024, 1);
        let all = [0..data.len()];
        let cuts = |seed| -> Vec<usize> {
            cdc(16 * 1024, seed)
                .split(&data, &all)
                .iter()
                .map(|p| p.offset + p.len)
                .collect()
        };
        assert_eq!(cuts(0), KNOWN_SEED0);
        assert_eq!(cuts(0x5eed_cafe), KNOWN_SEEDED);
    }

    const KNOWN_SEED0: &[usize] = &[
        23913, 53076, 80136, 97757, 107883, 112179, 164410, 193103, 199525, 222551, 259304, 272394,
        281837, 301413, 319122, 347886, 362950, 382943, 389561, 407010, 424764, 448452, 466476,
        489974, 504401, 510453, 524288,
    ];
    const KNOWN_SEEDED: &[usize] = &[
        21707, 35302, 55815, 100411, 114061, 124730, 143506, 184233, 198039, 231308, 250336,
        273665, 303931, 313373, 323147, 353178, 360668, 403872, 435820, 455575, 483611, 500557,
        522622, 524288,
    ];

    #[test]
    fn holes_and_zero_runs() {
        let mut data = noise(1 << 20, 7);
        // A 64 KiB zero run (a hole), a 2 KiB one (kept as data), an unallocated tail.
        data[65536..131072].fill(0);
        data[300_000..302_048].fill(0);
        data[(1 << 20) - 100_000..].fill(0);
        let alloc = [0..(1 << 20) - 100_000];
        let pieces = cdc(16 * 1024, 0).split(&data, &alloc);
        check_cover(&pieces, data.len());
        let holes: Vec<_> = pieces
            .iter()
            .filter(|p| !p.data)
            .map(|p| (p.offset, p.len))
            .collect();
        assert_eq!(holes[0], (65536, 65536));
        assert_eq!(holes.len(), 2);
        assert_eq!(holes[1].0 + holes[1].1, 1 << 20);
        assert!(pieces
            .iter()
            .all(|p| !p.data || !is_zero(&data[p.offset..p.offset + p.len])));
    }

    /// Cut rule 2: the pieces depend on the bytes only, not on which of them the container
    /// happened to allocate (512-byte VHD sectors, 64 KiB clusters, a sparse file).
    #[test]
    fn cuts_ignore_the_allocation_map() {
        let mut data = noise(1 << 20, 11);
        data[100_000..300_000].fill(0);
        data[500_123..509_001].fill(0);
        data[700_000..700_100].fill(0);
        let c = cdc(16 * 1024, 0);
        let all = c.split(&data, &[0..data.len()]);
        let maps: [&[Range<usize>]; 3] = [
            &[0..100_000, 300_000..data.len()],
            &[0..100_352, 299_520..500_224, 508_928..data.len()],
            &[0..65536, 65536..131072, 262144..data.len()],
        ];
        for m in maps {
            assert_eq!(c.split(&data, m), all, "{m:?}");
        }
        let mut p = ChunkerParams::fastcdc(16 * 1024);
        p.segment_size = 1 << 20;
        p.cut_rule = 1;
        let old = Chunker::new(p, 0);
        assert_ne!(
            old.split(&data, maps[1]),
            old.split(&data, &[0..data.len()])
        );
    }

    #[test]
    fn a_change_moves_only_nearby_cuts() {
        let a = noise(1 << 20, 3);
        let mut b = a.clone();
        b[500_000..500_100].fill(0xab);
        let all = [0..a.len()];
        let ca = cdc(16 * 1024, 0).split(&a, &all);
        let cb = cdc(16 * 1024, 0).split(&b, &all);
        let same = cb.iter().filter(|p| ca.contains(p)).count();
        assert!(same + 4 >= cb.len(), "{same} of {}", cb.len());
    }

    #[test]
    fn fixed_chunks() {
        let mut data = noise(256 * 1024, 5);
        data[64 * 1024..128 * 1024].fill(0);
        let mut p = ChunkerParams::fixed(64 * 1024);
        p.segment_size = 1 << 20;
        let pieces = Chunker::new(p, 0).split(&data, &[0..200 * 1024]);
        check_cover(&pieces, data.len());
        let kinds: Vec<_> = pieces
            .iter()
            .map(|p| (p.offset / 1024, p.len / 1024, p.data))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0, 64, true),
                (64, 64, false),
                (128, 64, true),
                (192, 64, true)
            ]
        );
        assert_eq!(
            Chunker::new(p, 0).split(&data, &[]),
            vec![Piece {
                offset: 0,
                len: 262144,
                data: false
            }]
        );
    }
}
