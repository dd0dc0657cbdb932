//! Hashed directory lookup (dir_index): find one name by its hash instead of scanning.
//!
//! Block 0 of an indexed directory holds "." and "..", then `dx_root_info` (hash version,
//! index depth) and a sorted array of (hash, logical block) pairs whose first slot holds the
//! array's limit and count instead of a hash. Interior nodes look like one empty dirent
//! covering the block, then the same array. The leaf for a name is the last entry whose
//! hash is ≤ the name's hash; names whose hashes collide may continue into the next leaf,
//! whose index hash then has the low "continued" bit set.
//!
//! Hashes: the legacy dx_hack hash, half-MD4 and TEA, each signed or unsigned (how the
//! creating platform's `char` behaved, recorded in the superblock flags), seeded from
//! `s_hash_seed`. Like the kernel, any inconsistency in the index (and casefolded or
//! SipHash directories, whose names need more than this reader does) makes the caller
//! fall back to the linear scan, so a damaged index never hides a name `read_dir` shows.

use super::dir::Raw;
use super::inode::Inode;
use super::superblock::{COMPAT_DIR_INDEX, INCOMPAT_LARGEDIR};
use super::Ext4;
use crate::fs::{read_vec, Le};
use crate::{Error, Result};

/// `i_flags`: the directory has a hash index.
pub const FL_INDEX: u32 = 0x1000;
/// `i_flags`: names are compared case-insensitively (casefold feature).
const FL_CASEFOLD: u32 = 0x4000_0000;
/// Leaves one lookup may visit following hash collisions.
const MAX_LEAVES: usize = 64;

/// What a hashed lookup found.
pub enum Found {
    Entry(Raw),
    Missing,
    /// The index cannot answer (unknown hash, damaged): scan linearly instead.
    Unusable,
}

/// One level of the index path: the (hash, block) pairs and the position taken.
struct Frame {
    entries: Vec<(u32, u32)>,
    at: usize,
}

impl Ext4 {
    /// Looks `name` up through the hash index of `dir`.
    pub(super) fn htree_find(&self, dir: &Inode, name: &[u8]) -> Found {
        if !self.sb.has_compat(COMPAT_DIR_INDEX)
            || !dir.has_flag(FL_INDEX)
            || dir.has_flag(FL_CASEFOLD)
        {
            return Found::Unusable;
        }
        self.htree_walk(dir, name).unwrap_or(Found::Unusable)
    }

    fn htree_walk(&self, dir: &Inode, name: &[u8]) -> Result<Found> {
        let bs = self.sb.block_size as usize;
        let root = self.dir_block(dir, 0)?;
        let le = Le::new(&root, "ext4: htree root");
        if le.u16(4)? != 12 || le.u32(24)? != 0 {
            return Ok(Found::Unusable);
        }
        let version = le.u8(28)?;
        let info_len = usize::from(le.u8(29)?);
        let levels = usize::from(le.u8(30)?);
        let max_levels = if self.sb.has_incompat(INCOMPAT_LARGEDIR) {
            3
        } else {
            2
        };
        if levels >= max_levels {
            return Ok(Found::Unusable);
        }
        let version = match version {
            0..=2 => version + if self.sb.hash_unsigned { 3 } else { 0 },
            3..=5 => version,
            _ => return Ok(Found::Unusable),
        };
        let Some(hash) = dx_hash(name, version, &self.sb.hash_seed) else {
            return Ok(Found::Unusable);
        };
        let mut frames: Vec<Frame> = Vec::with_capacity(levels + 1);
        let Some(first) = entries(&root, 24 + info_len, bs) else {
            return Ok(Found::Unusable);
        };
        frames.push(descend(first, hash));
        for _ in 0..levels {
            let block = current_block(&frames)?;
            let node = self.dir_block(dir, block)?;
            let le = Le::new(&node, "ext4: htree node");
            if le.u32(0)? != 0 {
                return Ok(Found::Unusable);
            }
            let Some(e) = entries(&node, 8, bs) else {
                return Ok(Found::Unusable);
            };
            frames.push(descend(e, hash));
        }
        for _ in 0..MAX_LEAVES {
            let block = current_block(&frames)?;
            let leaf = self.dir_block(dir, block)?;
            let mut found = None;
            let what = format!("ext4: directory {} block {block}", dir.ino);
            self.parse_block(&leaf, true, &what, &mut |r| {
                if r.name == name {
                    found = Some(r);
                    return Ok(false);
                }
                Ok(true)
            })?;
            if let Some(r) = found {
                return Ok(Found::Entry(r));
            }
            // Move to the next leaf; continue only if it holds the rest of this hash.
            let Some(next_hash) = self.advance(dir, &mut frames, levels)? else {
                return Ok(Found::Missing);
            };
            if next_hash & !1 != hash {
                return Ok(Found::Missing);
            }
        }
        Ok(Found::Unusable)
    }

    /// Steps the index path to the next leaf, re-reading the lower levels; returns the
    /// hash of the index entry stepped to, or None past the last leaf.
    fn advance(&self, dir: &Inode, frames: &mut Vec<Frame>, levels: usize) -> Result<Option<u32>> {
        let bs = self.sb.block_size as usize;
        let mut depth = frames.len();
        loop {
            let Some(f) = depth.checked_sub(1).and_then(|d| frames.get_mut(d)) else {
                return Ok(None);
            };
            f.at += 1;
            if f.at < f.entries.len() {
                break;
            }
            depth -= 1;
        }
        frames.truncate(depth);
        let hash = frames
            .last()
            .and_then(|f| f.entries.get(f.at))
            .map(|e| e.0)
            .unwrap_or(0);
        while frames.len() <= levels {
            let node = self.dir_block(dir, current_block(frames)?)?;
            let Some(e) = entries(&node, 8, bs) else {
                return Err(Error::Guest("ext4: htree node without entries".into()));
            };
            frames.push(Frame { entries: e, at: 0 });
        }
        Ok(Some(hash))
    }

    /// Reads logical block `lblk` of directory `dir`.
    pub(super) fn dir_block(&self, dir: &Inode, lblk: u64) -> Result<Vec<u8>> {
        let bs = self.sb.block_size;
        if lblk >= dir.size.div_ceil(bs) {
            return Err(Error::Guest(format!(
                "ext4: directory {}: htree points at block {lblk} past its end",
                dir.ino
            )));
        }
        let run = self
            .runs(dir, lblk..lblk + 1)?
            .into_iter()
            .find(|r| r.init)
            .ok_or_else(|| {
                Error::Guest(format!(
                    "ext4: directory {}: block {lblk} is a hole",
                    dir.ino
                ))
            })?;
        read_vec(
            self.dev.as_ref(),
            run.pblk * bs,
            bs,
            1 << 16,
            "ext4: directory block",
        )
    }
}

fn current_block(frames: &[Frame]) -> Result<u64> {
    frames
        .last()
        .and_then(|f| f.entries.get(f.at))
        .map(|e| u64::from(e.1 & 0x0FFF_FFFF))
        .ok_or_else(|| Error::Guest("ext4: htree path is empty".into()))
}

/// The (hash, block) array at `at`: limit and count in the first slot, whose hash is 0.
fn entries(b: &[u8], at: usize, bs: usize) -> Option<Vec<(u32, u32)>> {
    let le = Le::new(b, "ext4: htree entries");
    let limit = usize::from(le.u16(at).ok()?);
    let count = usize::from(le.u16(at + 2).ok()?);
    if count == 0 || count > limit || at + limit * 8 > bs {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let mut prev = 0u32;
    for i in 0..count {
        let hash = if i == 0 { 0 } else { le.u32(at + i * 8).ok()? };
        if hash < prev {
            return None;
        }
        prev = hash;
        out.push((hash, le.u32(at + i * 8 + 4).ok()?));
    }
    Some(out)
}

/// The frame for `entries` positioned at the last entry whose hash is ≤ `hash`.
fn descend(entries: Vec<(u32, u32)>, hash: u32) -> Frame {
    let at = entries.partition_point(|e| e.0 <= hash).saturating_sub(1);
    Frame { entries, at }
}

/// The directory hash of `name` for hash version `v` (0 legacy, 1 half-MD4, 2 TEA; +3
/// for the unsigned-char variants), low bit cleared; None for other versions.
pub fn dx_hash(name: &[u8], v: u8, seed: &[u32; 4]) -> Option<u32> {
    if v > 5 {
        return None;
    }
    let mut buf = if seed.iter().any(|&s| s != 0) {
        *seed
    } else {
        [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476]
    };
    let unsigned = v >= 3;
    let hash = match v % 3 {
        0 => legacy(name, unsigned),
        1 => {
            for p in tails(name, 32) {
                half_md4(&mut buf, &str2hashbuf::<8>(p, unsigned));
            }
            buf[1]
        }
        _ => {
            for p in tails(name, 16) {
                tea(&mut buf, &str2hashbuf::<4>(p, unsigned));
            }
            buf[0]
        }
    };
    let hash = hash & !1;
    // 0xFFFFFFFE marks the end of a readdir; the kernel moves names off it.
    Some(if hash == 0xFFFF_FFFE {
        0xFFFF_FFFC
    } else {
        hash
    })
}

/// `name`, then `name` without its first `step` bytes, and so on while bytes remain: the
/// kernel hashes each remainder (padding by the remaining length).
fn tails(name: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
    (0..name.len())
        .step_by(step)
        .filter_map(move |i| name.get(i..))
}

/// A name byte as C's `char` would widen it.
fn widen(c: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(c)
    } else {
        i32::from(c as i8) as u32
    }
}

fn legacy(name: &[u8], unsigned: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for &c in name {
        let mut h = h1.wrapping_add(h0 ^ widen(c, unsigned).wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// Packs up to `N * 4` name bytes into words, padded with the length.
fn str2hashbuf<const N: usize>(msg: &[u8], unsigned: bool) -> [u32; N] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; N];
    let mut val = pad;
    let mut k = 0usize;
    for (i, &c) in msg.iter().take(N * 4).enumerate() {
        val = widen(c, unsigned).wrapping_add(val << 8);
        if i % 4 == 3 {
            if let Some(slot) = out.get_mut(k) {
                *slot = val;
            }
            k += 1;
            val = pad;
        }
    }
    if let Some(slot) = out.get_mut(k) {
        *slot = val;
    }
    out
}

fn tea(buf: &mut [u32; 4], inp: &[u32; 4]) {
    let mut sum = 0u32;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let [a, b, c, d] = *inp;
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ (b1.wrapping_add(sum)) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ (b0.wrapping_add(sum)) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    let step = |a: u32, fv: u32, x: u32, k: u32, s: u32| {
        a.wrapping_add(fv)
            .wrapping_add(x)
            .wrapping_add(k)
            .rotate_left(s)
    };
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    // Round 1: words in order, shifts 3, 7, 11, 19.
    for i in [0usize, 4] {
        a = step(a, f(b, c, d), x[i], 0, 3);
        d = step(d, f(a, b, c), x[i + 1], 0, 7);
        c = step(c, f(d, a, b), x[i + 2], 0, 11);
        b = step(b, f(c, d, a), x[i + 3], 0, 19);
    }
    // Round 2: words 1, 3, 5, 7, 0, 2, 4, 6; shifts 3, 5, 9, 13.
    for i in [1usize, 0] {
        a = step(a, g(b, c, d), x[i], K2, 3);
        d = step(d, g(a, b, c), x[i + 2], K2, 5);
        c = step(c, g(d, a, b), x[i + 4], K2, 9);
        b = step(b, g(c, d, a), x[i + 6], K2, 13);
    }
    // Round 3: words 3, 7, 2, 6, 1, 5, 0, 4; shifts 3, 9, 11, 15.
    for i in [3usize, 1] {
        a = step(a, h(b, c, d), x[i], K3, 3);
        d = step(d, h(a, b, c), x[i + 4], K3, 9);
        c = step(c, h(d, a, b), x[i - 1], K3, 11);
        b = step(b, h(c, d, a), x[i + 3], K3, 15);
    }
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::dx_hash;

    /// Values from `debugfs -R "dx_hash -h ALG [-s SEED] NAME"` (e2fsprogs 1.47).
    #[test]
    fn hashes_match_e2fsprogs() {
        let zero = [0u32; 4];
        let long = b"caf\xe9-with-a-rather-long-name-past-32-bytes-xx";
        let cases: [(&[u8], u8, u32); 9] = [
            (b"hello", 0, 0x3225_2546),
            (b"hello", 1, 0x1746_da32),
            (b"hello", 2, 0x6f5b_b1a8),
            (long, 0, 0xca26_dcf4),
            (long, 1, 0x9c7a_8378),
            (long, 2, 0xa0d2_fee4),
            (long, 3, 0xe7ea_9dee),
            (long, 4, 0x6f97_86dc),
            (long, 5, 0x7fc1_d018),
        ];
        for (name, v, want) in cases {
            assert_eq!(dx_hash(name, v, &zero), Some(want), "version {v}");
        }
        // Seed 12345678-1234-1234-1234-123456789abc, its bytes read as little-endian words.
        let uuid: [u8; 16] = [
            0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x56, 0x78,
            0x9a, 0xbc,
        ];
        let mut seed = [0u32; 4];
        for (i, w) in seed.iter_mut().enumerate() {
            *w = u32::from_le_bytes(uuid[i * 4..i * 4 + 4].try_into().unwrap());
        }
        assert_eq!(dx_hash(b"hello", 1, &seed), Some(0x06cc_2f6e));
        assert_eq!(dx_hash(long, 1, &seed), Some(0xcc48_faca));
        assert_eq!(dx_hash(b"x", 6, &zero), None);
    }
}
