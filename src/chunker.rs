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
//!   fixed, disk-aligned offsets; under cut rule 3 FastCDC's chunks also end at file starts
//!   (a 4 KiB-aligned offset after a zero-padded block tail, [`FILE_TAIL`]).
//!
//! The cut points are part of the repository format: the `fastcdc` crate is pinned exactly
//! and `known_cut_points` below fails if they ever move.

use crate::repo::config::{ChunkerKind, ChunkerParams};
use std::ops::Range;

/// Zero detection works on blocks of this size, aligned to the disk offset.
pub const ZERO_BLOCK: usize = 4096;

/// Cut rule 3: the zero bytes that must end a 4 KiB block for a file to start after it.
pub const FILE_TAIL: usize = 64;

/// Cut rule 3: the shortest chunk a file start may end (one block: a small file is a chunk
/// of its own).
pub const FILE_MIN: usize = 4096;

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
                    let disk = base + run.start as u64;
                    self.cut_cdc(&data[run.clone()], run.start, disk, &mut out);
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

    /// Cuts one data run (`base` is its offset in the segment, `disk` its disk offset).
    fn cut_cdc(&self, run: &[u8], base: usize, disk: u64, out: &mut Vec<Piece>) {
        let p = &self.params;
        let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
            run,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            fastcdc::v2020::Normalization::Level1,
            self.seed,
        );
        let mut push = |offset: usize, len: usize| {
            out.push(Piece {
                offset: base + offset,
                len,
                data: true,
            })
        };
        if p.cut_rule < 3 {
            for c in cdc {
                push(c.offset, c.length);
            }
            return;
        }
        let mut pos = 0;
        while pos < run.len() {
            let limit = self.file_start_after(run, pos, disk).unwrap_or(run.len());
            let (_, end) = cdc.cut(pos, limit - pos);
            push(pos, end - pos);
            pos = end;
        }
    }

    /// Cut rule 3: the first offset in `run` after `pos` (at least [`FILE_MIN`] on, at most
    /// `max_size`) that is 4 KiB-aligned on the disk and follows [`FILE_TAIL`] zero bytes.
    ///
    /// Why: file systems start every file on a block boundary and leave the rest of a
    /// file's last block zero (on a freshly written volume). Such a boundary is almost
    /// always where one file ends and the next begins, so cutting there makes a file's
    /// chunks depend on the file alone: when a rebuilt volume places the file next to other
    /// neighbours, its chunks still dedup, as 4 KiB block dedup would. The rule looks at
    /// the bytes only (no file-system reader), so it holds for ext4, XFS, NTFS and FAT
    /// alike, and inside a chunk it depends only on the bytes before the cut, as FastCDC
    /// does: a window re-chunked around a change still cuts as a full read does.
    fn file_start_after(&self, run: &[u8], pos: usize, disk: u64) -> Option<usize> {
        let shift = (disk % ZERO_BLOCK as u64) as usize;
        let last = (pos + self.params.max_size as usize).min(run.len().saturating_sub(1));
        let mut b = (pos + FILE_MIN + shift).next_multiple_of(ZERO_BLOCK) - shift;
        while b <= last {
            if is_zero(&run[b - FILE_TAIL..b]) {
                return Some(b);
            }
            b += ZERO_BLOCK;
        }
        None
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
        p.cut_rule = 2;
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

    fn rule(cut_rule: u32) -> Chunker {
        let mut p = ChunkerParams::fastcdc(32 * 1024);
        p.cut_rule = cut_rule;
        Chunker::new(p, 0x5eed_cafe)
    }

    /// "Files" of noise, each starting on a 4 KiB boundary with its last block's rest zero,
    /// laid out back to back in the given order: what a file system writes.
    fn volume(files: &[Vec<u8>], order: &[usize]) -> Vec<u8> {
        let mut v = Vec::new();
        for &i in order {
            v.extend_from_slice(&files[i]);
            v.resize(v.len().next_multiple_of(ZERO_BLOCK), 0);
        }
        v
    }

    fn files(n: usize) -> Vec<Vec<u8>> {
        let mut sizes = noise(8 * n, 99).into_iter();
        (0..n)
            .map(|i| {
                // Mostly small files (300 B to 20 KiB), every 8th up to 200 KiB.
                let r = u32::from_le_bytes([0, 1, 2, 3].map(|_| sizes.next().unwrap_or(0)));
                let len = if i % 8 == 0 {
                    300 + r % 200_000
                } else {
                    300 + r % 20_000
                };
                noise(len as usize, i as u64 + 1000)
            })
            .collect()
    }

    /// Bytes of `b`'s data pieces whose content is not among `a`'s pieces.
    fn new_bytes(c: &Chunker, a: &[u8], b: &[u8]) -> usize {
        let pieces = |d: &[u8]| c.split(d, &[0..d.len()]);
        let old: std::collections::HashSet<&[u8]> = pieces(a)
            .iter()
            .map(|p| &a[p.offset..p.offset + p.len])
            .collect();
        pieces(b)
            .iter()
            .filter(|p| p.data && !old.contains(&b[p.offset..p.offset + p.len]))
            .map(|p| p.len)
            .sum()
    }

    /// The point of cut rule 3: the same files laid out again in another order (a rebuilt
    /// file system) cost almost nothing, where rule 2's chunks straddle files and change.
    #[test]
    fn rule_3_keeps_files_that_move() {
        let f = files(300);
        let order: Vec<usize> = (0..f.len()).collect();
        let mut moved = order.clone();
        moved.swap(10, 200);
        moved[50..150].reverse();
        moved.retain(|&i| i % 37 != 0);
        let (a, b) = (volume(&f, &order), volume(&f, &moved));
        let three = new_bytes(&rule(3), &a, &b);
        let two = new_bytes(&rule(2), &a, &b);
        assert!(
            three * 100 < 3 * b.len(),
            "rule 3 stored {three} of {}",
            b.len()
        );
        assert!(two * 4 > b.len(), "rule 2 stored {two} of {}", b.len());
    }

    /// Chunking may restart at any cut of rule 3 and cut on exactly as the whole run does,
    /// wherever the restart lies against the 4 KiB grid: what re-chunking a window around
    /// a change relies on.
    #[test]
    fn rule_3_restarts_at_any_cut() {
        let f = files(60);
        let order: Vec<usize> = (0..f.len()).collect();
        let mut data = vec![7u8; 1000];
        data.extend(volume(&f, &order));
        let c = rule(3);
        // The files start on the disk's 4 KiB grid: 7192 + 1000 = 2 × 4096.
        let whole = c.split_at(&data, &[0..data.len()], 7192);
        assert!(whole.len() > 60, "{} pieces", whole.len());
        for p in whole.iter().step_by(3) {
            let tail = &data[p.offset..];
            let again: Vec<Piece> = c
                .split_at(tail, &[0..tail.len()], 7192 + p.offset as u64)
                .iter()
                .map(|q| Piece {
                    offset: q.offset + p.offset,
                    ..*q
                })
                .collect();
            let expect: Vec<Piece> = whole
                .iter()
                .filter(|q| q.offset >= p.offset)
                .copied()
                .collect();
            assert_eq!(again, expect, "restart at {}", p.offset);
        }
    }

    /// Rule 3's cut points on a fixed layout; like `known_cut_points`, a change here is a
    /// format change.
    #[test]
    fn known_cut_points_rule_3() {
        let f = files(40);
        let order: Vec<usize> = (0..f.len()).collect();
        let data = volume(&f, &order);
        let cuts: Vec<usize> = rule(3)
            .split(&data, &[0..data.len()])
            .iter()
            .map(|p| p.offset + p.len)
            .collect();
        assert_eq!(cuts, KNOWN_RULE3);
    }

    const KNOWN_RULE3: &[usize] = &[
        46566, 75848, 90112, 102400, 110592, 118784, 131072, 135168, 143824, 163840, 192512,
        212992, 217088, 233472, 245760, 249856, 262144, 274432, 337332, 389150, 422791, 454656,
        475136, 491520, 507764, 512000, 516096, 540672, 561152, 594528, 627670, 650114, 667648,
        671744, 688128, 692224, 704512, 712704, 720896, 737280, 758467, 827555, 889413, 929792,
        946176, 950272, 959975, 978944, 983040, 987136, 995328,
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
