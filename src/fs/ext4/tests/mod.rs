//! Tests over real images made by `mkfs.ext2/3/4 -d` from a host tree (see `fixtures`),
//! compared with the tree, plus targeted checks and refusals.

mod fixtures;
mod fuzz;

use self::fixtures::*;
use super::htree::{Found, FL_INDEX};
use super::inode::FL_INLINE_DATA;
use super::*;
use crate::blockdev::MemDisk;
use crate::fs::testutil::{assert_same_tree, sh, show, walk, Compare};
use crate::fs::{data_ranges, Time};
use std::path::Path;

/// Follows a '/'-separated path from the root.
fn lookup(fs: &Ext4, path: &str) -> DirEntry {
    let mut ino = fs.root();
    let mut last = None;
    for part in path.split('/') {
        let e = fs
            .lookup(ino, part.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: no {part}"));
        ino = e.ino;
        last = Some(e);
    }
    last.unwrap()
}

/// Builds the tree and one image of it, returning (temp dir, source, image).
fn image(
    tool: &str,
    opts: &[&str],
    big: bool,
    entries: usize,
    index: bool,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, big, entries);
    // hash_alg=… (tune2fs) and unsigned_hash (the superblock flag) change how e2fsck -D
    // builds the indexes.
    let (hash, opts): (Vec<&str>, Vec<&str>) = opts
        .iter()
        .partition(|o| o.starts_with("hash_alg=") || **o == "unsigned_hash");
    let img = mkfs(&src, tmp.path(), tool, &opts, 64, false);
    for h in hash {
        if h == "unsigned_hash" {
            debugfs_w(&img, "ssv flags 2");
        } else {
            sh("tune2fs", &["-E", h, img.to_str().unwrap()]);
        }
    }
    if index {
        e2fsck(&img, &["-fyD"]);
    }
    (tmp, src, img)
}

/// Everything an image of the test tree must show.
fn check(fs: &Ext4, src: &Path, img: &Path, entries: usize) {
    assert_same_tree(fs, src, Compare::UNIX, &["lost+found"]);
    let a = lookup(fs, "small.txt");
    let b = lookup(fs, "hard");
    assert_eq!(a.ino, b.ino, "a hard link shares the inode");
    assert_eq!(fs.stat(a.ino).unwrap().nlink, 2);
    assert_eq!(lookup(fs, "fifo").kind, FileType::Fifo);
    assert_eq!(lookup(fs, "socket").kind, FileType::Socket);
    let m = fs.stat(lookup(fs, "suid").ino).unwrap();
    assert_eq!(m.mode, 0o4755);
    assert_eq!(fs.stat(lookup(fs, "sticky").ino).unwrap().mode, 0o1777);
    assert_eq!(fs.stat(lookup(fs, "private").ino).unwrap().mode, 0o600);
    if is_root() {
        let c = fs.stat(lookup(fs, "chardev").ino).unwrap();
        assert_eq!((c.kind, c.rdev), (FileType::CharDev, Some((1, 3))));
        let o = fs.stat(lookup(fs, "owned").ino).unwrap();
        assert_eq!((o.uid, o.gid), (1234, 5678));
        let o = fs.stat(lookup(fs, "high_owner").ino).unwrap();
        assert_eq!((o.uid, o.gid), (100_000, 200_000));
    }
    let l = lookup(fs, "link_long");
    assert_eq!(fs.read_link(l.ino).unwrap(), LONG_TARGET.as_bytes());
    assert_eq!(fs.stat(l.ino).unwrap().size, LONG_TARGET.len() as u64);
    assert_eq!(
        fs.read_link(lookup(fs, "link_short").ino).unwrap(),
        b"small.txt"
    );
    let bad = fs.lookup(fs.root(), b"bad\xffname\xfe").unwrap().unwrap();
    assert_eq!(bad.kind, FileType::File);
    let many = lookup(fs, "many");
    assert_eq!(fs.read_dir(many.ino).unwrap().len(), entries);
    if entries > 1234 {
        let e = fs.lookup(many.ino, b"f01234").unwrap().unwrap();
        let mut buf = [0u8; 64];
        let n = fs.read(e.ino, 0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"entry 1234\n");
    }
    assert!(fs.lookup(many.ino, b"nope").unwrap().is_none());
    check_sparse(fs);
    check_used(fs, img);
    check_htree(fs, "many");
    check_htree(fs, "longnames");
}

/// (hash version, index levels) of an indexed directory, None if it is not indexed.
fn index_info(fs: &Ext4, path: &str) -> Option<(u8, u8)> {
    let inode = fs.inode(lookup(fs, path).ino).unwrap();
    if !inode.has_flag(FL_INDEX) {
        return None;
    }
    let b = fs.dir_block(&inode, 0).unwrap();
    Some((b[28], b[30]))
}

/// Every name of an indexed directory is found through the index, and a missing one is
/// reported missing by it (not by the linear fallback).
fn check_htree(fs: &Ext4, path: &str) {
    let d = lookup(fs, path);
    let inode = fs.inode(d.ino).unwrap();
    if !inode.has_flag(FL_INDEX) {
        return;
    }
    for e in fs.read_dir(d.ino).unwrap() {
        match fs.htree_find(&inode, &e.name) {
            Found::Entry(r) => assert_eq!(r.ino, e.ino),
            _ => panic!("{path}/{}: not found through the index", show(&e.name)),
        }
    }
    assert!(matches!(fs.htree_find(&inode, b"nope"), Found::Missing));
}

/// The sparse file maps its pieces as data and the rest as holes, and the data pieces'
/// disk offsets hold its bytes.
fn check_sparse(fs: &Ext4) {
    let e = lookup(fs, "sparse.bin");
    let maps = fs.map(e.ino).unwrap();
    let bs = fs.block_size();
    let mut pos = 0;
    for m in &maps {
        assert_eq!(m.file_offset, pos, "pieces cover the file in order");
        assert_eq!(m.data, m.disk_offset.is_some());
        pos += m.len;
    }
    assert!(pos >= SPARSE_SIZE && pos < SPARSE_SIZE + bs);
    let data = data_ranges(fs, e.ino, SPARSE_SIZE).unwrap();
    for &(at, n, v) in SPARSE_PIECES {
        assert!(
            data.iter().any(|r| r.start <= at && r.end >= at + n as u64),
            "piece at {at} is mapped as data"
        );
        let m = maps
            .iter()
            .find(|m| m.file_offset <= at && m.file_offset + m.len > at)
            .unwrap();
        let mut b = [0u8; 1];
        let off = m.disk_offset.unwrap() + (at - m.file_offset);
        fs.dev.read_at(off, &mut b).unwrap();
        assert_eq!(b[0], v, "disk offset of the piece at {at}");
    }
    let stored: u64 = data.iter().map(|r| r.end - r.start).sum();
    assert!(stored < 2 << 20, "{stored} bytes of a sparse file stored");
    assert!(maps
        .iter()
        .any(|m| !m.data && m.file_offset <= 2 << 20 && m.file_offset + m.len >= 3 << 20));
}

/// The used blocks agree with the free count mkfs wrote, and hold every file's data.
fn check_used(fs: &Ext4, img: &Path) {
    let used = fs.used_blocks().unwrap();
    for w in used.windows(2) {
        assert!(w[0].end < w[1].start, "sorted and merged");
    }
    let total: u64 = used.iter().map(|r| r.end - r.start).sum();
    let free: u64 = dumpe2fs_field(img, "Free blocks").parse().unwrap();
    assert_eq!(
        total,
        fs.blocks_count() - free,
        "used blocks vs the free count"
    );
    let bs = fs.block_size();
    let inside = |a: u64, b: u64| {
        let i = used.partition_point(|r| r.end <= a);
        used.get(i).is_some_and(|r| r.start <= a && r.end >= b)
    };
    let tree = walk(fs).unwrap();
    for (meta, _) in tree.values() {
        if meta.kind != FileType::File && meta.kind != FileType::Dir {
            continue;
        }
        for m in fs.map(meta.ino).unwrap() {
            if let Some(d) = m.disk_offset {
                assert!(
                    inside(d / bs, (d + m.len).div_ceil(bs)),
                    "data at {d} is used"
                );
            }
        }
    }
}

#[test]
fn ext4_4k_htree() {
    if !tools() {
        return;
    }
    let (_t, src, img) = image(
        "mkfs.ext4",
        &["-b", "4096", "-N", "8192"],
        true,
        BIG_DIR_ENTRIES,
        true,
    );
    let fs = open_img(&img);
    assert_eq!(fs.kind(), "ext4");
    assert!(fs.warnings().is_empty(), "{:?}", fs.warnings());
    assert_eq!(index_info(&fs, "many"), Some((1, 0)), "indexed, half-MD4");
    check(&fs, &src, &img, BIG_DIR_ENTRIES);
    // The 20 MiB file reads back at an odd offset and maps to few pieces.
    let big = lookup(&fs, "big.bin");
    let want = pattern(20 << 20, 1);
    let mut buf = vec![0u8; 12345];
    let n = fs.read(big.ino, 7_000_001, &mut buf).unwrap();
    assert_eq!(&buf[..n], &want[7_000_001..7_000_001 + 12345]);
    assert!(fs.map(big.ino).unwrap().len() < 20);
    // The sparse file has more extents than i_block holds: its tree has an index level.
    let sparse = fs.inode(lookup(&fs, "sparse.bin").ino).unwrap();
    assert!(u16::from_le_bytes([sparse.i_block()[6], sparse.i_block()[7]]) >= 1);
    assert_eq!(fs.read(big.ino, 20 << 20, &mut buf).unwrap(), 0);
}

#[test]
fn ext4_1k_meta_bg() {
    if !tools() {
        return;
    }
    let opts = [
        "-b",
        "1024",
        "-g",
        "1024",
        "-N",
        "8192",
        "-O",
        "meta_bg,^resize_inode",
    ];
    let (_t, src, img) = image("mkfs.ext4", &opts, true, BIG_DIR_ENTRIES, true);
    let fs = open_img(&img);
    assert!(fs.sb.group_count > 16, "several meta groups");
    assert_eq!(
        index_info(&fs, "longnames"),
        Some((1, 1)),
        "a two-level index"
    );
    check(&fs, &src, &img, BIG_DIR_ENTRIES);
}

#[test]
fn ext4_block_maps() {
    if !tools() {
        return;
    }
    let opts = [
        "-b",
        "1024",
        "-N",
        "8192",
        "-O",
        "^extent,^64bit,sparse_super2",
        "hash_alg=legacy",
    ];
    let (_t, src, img) = image("mkfs.ext4", &opts, true, BIG_DIR_ENTRIES, true);
    let fs = open_img(&img);
    assert_eq!(index_info(&fs, "many").map(|i| i.0), Some(0), "legacy hash");
    let big = lookup(&fs, "big.bin");
    assert!(!fs
        .inode(big.ino)
        .unwrap()
        .has_flag(super::inode::FL_EXTENTS));
    check(&fs, &src, &img, BIG_DIR_ENTRIES);
}

#[test]
fn ext2_ext3() {
    if !tools() {
        return;
    }
    // ext2 without the filetype feature: entry types come from the inodes.
    let (_t, src, img) = image(
        "mkfs.ext2",
        &[
            "-b",
            "1024",
            "-I",
            "128",
            "-O",
            "^filetype",
            "unsigned_hash",
        ],
        false,
        500,
        true,
    );
    let fs = open_img(&img);
    assert_eq!(fs.kind(), "ext2");
    assert!(fs.sb.hash_unsigned);
    assert!(index_info(&fs, "many").is_some());
    check(&fs, &src, &img, 500);
    let (_t, src, img) = image(
        "mkfs.ext3",
        &["-b", "4096", "-N", "8192", "hash_alg=tea"],
        true,
        BIG_DIR_ENTRIES,
        true,
    );
    let fs = open_img(&img);
    assert_eq!(fs.kind(), "ext3");
    assert_eq!(index_info(&fs, "many").map(|i| i.0), Some(2), "TEA hash");
    check(&fs, &src, &img, BIG_DIR_ENTRIES);
}

#[test]
fn ext4_64bit_csum_inline() {
    if !tools() {
        return;
    }
    let opts = [
        "-b",
        "4096",
        "-I",
        "512",
        "-N",
        "8192",
        "-O",
        "64bit,metadata_csum,inline_data",
        "-L",
        "guest-root",
    ];
    let (_t, src, img) = image("mkfs.ext4", &opts, true, BIG_DIR_ENTRIES, true);
    let fs = open_img(&img);
    assert_eq!(fs.label().as_deref(), Some("guest-root"));
    assert_eq!(fs.sb.desc_size, 64);
    for p in ["sized_100", "sized_150", "d1", "link_long"] {
        let e = lookup(&fs, p);
        assert!(
            fs.inode(e.ino).unwrap().has_flag(FL_INLINE_DATA),
            "{p} is inline"
        );
    }
    let m = fs.map(lookup(&fs, "sized_150").ino).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].len, m[0].disk_offset, m[0].data), (150, None, true));
    check(&fs, &src, &img, BIG_DIR_ENTRIES);
}

#[test]
fn ext4_64k_blocks_and_bigalloc() {
    if !tools() {
        return;
    }
    let (_t, src, img) = image("mkfs.ext4", &["-b", "65536"], false, 300, false);
    let fs = open_img(&img);
    assert_eq!(fs.block_size(), 65536);
    check(&fs, &src, &img, 300);
    let opts = ["-b", "1024", "-C", "16384", "-O", "bigalloc"];
    let (_t, src, img) = image("mkfs.ext4", &opts, false, 300, true);
    let fs = open_img(&img);
    assert_eq!(fs.sb.cluster_ratio, 16);
    check(&fs, &src, &img, 300);
}

#[test]
fn timestamps_nanoseconds_and_epoch_bits() {
    if !tools() {
        return;
    }
    let (_t, _src, img) = image("mkfs.ext4", &["-b", "4096"], false, 3, false);
    // 2100-01-02 03:04:05.123456789: low word 0xF487D3A5 (negative as i32), epoch 1.
    debugfs_w(&img, "sif /small.txt mtime 0xF487D3A5");
    debugfs_w(
        &img,
        &format!(
            "sif /small.txt mtime_extra {:#x}",
            (123_456_789u32 << 2) | 1
        ),
    );
    // 1961: a negative time, epoch 0.
    debugfs_w(&img, "sif /small.txt atime 0xF0000000");
    debugfs_w(
        &img,
        &format!("sif /small.txt atime_extra {:#x}", 999_999_999u32 << 2),
    );
    // Epoch 2 on a small low word.
    debugfs_w(&img, "sif /small.txt ctime 0x10");
    debugfs_w(
        &img,
        &format!("sif /small.txt ctime_extra {:#x}", (5u32 << 2) | 2),
    );
    let fs = open_img(&img);
    let m = fs.stat(lookup(&fs, "small.txt").ino).unwrap();
    assert_eq!(
        m.mtime,
        Time {
            sec: 4_102_542_245,
            nsec: 123_456_789
        }
    );
    assert_eq!(
        m.atime,
        Time {
            sec: -268_435_456,
            nsec: 999_999_999
        }
    );
    assert_eq!(
        m.ctime,
        Time {
            sec: (2i64 << 32) + 16,
            nsec: 5
        }
    );
}

#[test]
fn dirty_journal_and_unclean_state() {
    if !tools() {
        return;
    }
    let (_t, src, img) = image("mkfs.ext4", &["-b", "4096"], false, 50, false);
    debugfs_w(&img, "feature needs_recovery");
    let fs = open_img(&img);
    assert_eq!(
        fs.warnings(),
        vec![
            "ext4: the journal needs recovery (the image is crash-consistent); files are shown \
              as on disk, without replaying the journal, as `mount -o ro,noload` would"
                .to_string()
        ]
    );
    assert_same_tree(&fs, &src, Compare::UNIX, &["lost+found"]);
    let (_t, _src, img) = image("mkfs.ext2", &["-b", "4096"], false, 5, false);
    debugfs_w(&img, "ssv state 0");
    let w = open_img(&img).warnings();
    assert!(
        w.len() == 1 && w[0].contains("not cleanly unmounted"),
        "{w:?}"
    );
}

#[test]
fn encrypted_inode_refused_alone() {
    if !tools() {
        return;
    }
    let (_t, _src, img) = image("mkfs.ext4", &["-b", "4096"], false, 5, false);
    debugfs_w(&img, "feature encrypt");
    debugfs_w(&img, "sif /small.txt flags 0x80800");
    let fs = open_img(&img);
    let e = lookup(&fs, "small.txt");
    assert!(fs.stat(e.ino).is_ok());
    let mut buf = [0u8; 16];
    match fs.read(e.ino, 0, &mut buf) {
        Err(Error::Unsupported(m)) => assert!(m.contains("encrypt"), "{m}"),
        r => panic!("read of an encrypted file: {r:?}"),
    }
    assert!(matches!(fs.map(e.ino), Err(Error::Unsupported(_))));
    assert!(fs.read(lookup(&fs, "d1/one.txt").ino, 0, &mut buf).is_ok());
}

#[test]
fn refused_features_and_probe() {
    if !tools() {
        return;
    }
    let (_t, _src, img) = image("mkfs.ext4", &["-b", "4096"], false, 5, false);
    let base = std::fs::read(&img).unwrap();
    assert!(probe(&MemDisk(base.clone())));
    assert!(!probe(&MemDisk(vec![0u8; 4096])));
    assert!(!probe(&MemDisk(vec![0u8; 100])));
    let with_incompat = |bit: u32| {
        let mut b = base.clone();
        let at = 1024 + 0x60;
        let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) | bit;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        match open_ext4(Arc::new(MemDisk(b))) {
            Err(Error::Unsupported(m)) => m,
            Err(e) => panic!("bit {bit:#x}: {e}"),
            Ok(_) => panic!("bit {bit:#x} opened"),
        }
    };
    assert!(with_incompat(0x20).contains("0x20"));
    assert!(with_incompat(0x80_0000).contains("0x800000"));
    assert!(with_incompat(0x1).contains("compression"));
    assert!(with_incompat(0x8).contains("journal"));
    // A truncated volume fails cleanly.
    assert!(open_ext4(Arc::new(MemDisk(base[..3000].to_vec()))).is_err());
}

#[test]
fn unwritten_extents() {
    if !tools() {
        return;
    }
    let (_t, _src, img) = image("mkfs.ext4", &["-b", "4096"], false, 3, false);
    // Blocks 0..99 of a 256-block hole become unwritten; small.txt gets unwritten blocks
    // past its end (what fallocate --keep-size leaves).
    debugfs_w(&img, "fallocate /prealloc 0 99");
    debugfs_w(&img, "fallocate /small.txt 2 9");
    let fs = open_img(&img);
    let e = lookup(&fs, "prealloc");
    let inode = fs.inode(e.ino).unwrap();
    let runs = fs.runs(&inode, 0..256).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].lblk, runs[0].len, runs[0].init), (0, 100, false));
    let maps = fs.map(e.ino).unwrap();
    assert!(maps.iter().all(|m| !m.data && m.disk_offset.is_none()));
    assert_eq!(maps.iter().map(|m| m.len).sum::<u64>(), 1 << 20);
    assert!(data_ranges(&fs, e.ino, 1 << 20).unwrap().is_empty());
    let content = crate::fs::testutil::read_all(&fs, e.ino, 1 << 20).unwrap();
    assert!(content.iter().all(|&b| b == 0));
    let used = fs.used_blocks().unwrap();
    let p = runs[0].pblk;
    assert!(
        used.iter().any(|r| r.start <= p && r.end >= p + 100),
        "allocated"
    );
    let s = lookup(&fs, "small.txt");
    let maps = fs.map(s.ino).unwrap();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert!(maps[0].data && maps[0].len == 4096);
    let mut buf = [0u8; 64];
    let n = fs.read(s.ino, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello, ext4\n");
}

/// Byte offset of inode `ino` in the image.
fn inode_offset(fs: &Ext4, ino: u64) -> usize {
    let ipg = u64::from(fs.sb.inodes_per_group);
    let gd = fs.groups[((ino - 1) / ipg) as usize];
    (gd.inode_table * fs.block_size() + (ino - 1) % ipg * u64::from(fs.sb.inode_size)) as usize
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Hand-made hostile structures end in errors, quickly.
#[test]
fn hostile_structures() {
    if !tools() {
        return;
    }
    let (_t, _src, img) = image("mkfs.ext2", &["-b", "1024"], false, 5, false);
    let fs = open_img(&img);
    let mut base = std::fs::read(&img).unwrap();
    let ino = lookup(&fs, "medium.bin").ino;
    let root_block = fs.map(fs.root()).unwrap()[0].disk_offset.unwrap() as usize;
    // A free block X filled with X: as a triple-indirect block it points at itself at
    // every level, so a 1 TiB size maps 2^24 pointers that all name block X.
    let used = fs.used_blocks().unwrap();
    let x = used.last().unwrap().end;
    assert!(
        x < fs.blocks_count(),
        "a free block after the last used one"
    );
    let xo = (x * 1024) as usize;
    for i in 0..256 {
        put32(&mut base, xo + i * 4, x as u32);
    }
    let io = inode_offset(&fs, ino);
    put32(&mut base, io + 0x28 + 14 * 4, x as u32);
    put32(&mut base, io + 0x6C, 256); // size_high: 1 TiB
    drop(fs);
    let fs = open_ext4(Arc::new(MemDisk(base.clone()))).unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(fs.map(ino), Err(Error::Guest(_))));
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
    let mut buf = vec![0u8; 4096];
    assert_eq!(fs.read(ino, 1 << 39, &mut buf).unwrap(), 4096);
    // A directory record of length 0 is an error, not an endless loop.
    let mut b = base.clone();
    b[root_block + 4..root_block + 6].copy_from_slice(&0u16.to_le_bytes());
    let fs = open_ext4(Arc::new(MemDisk(b))).unwrap();
    assert!(matches!(fs.read_dir(fs.root()), Err(Error::Guest(_))));

    // An extent tree claiming 6 levels.
    let (_t, _src, img) = image("mkfs.ext4", &["-b", "1024"], false, 5, false);
    let fs = open_img(&img);
    let ino = lookup(&fs, "sparse.bin").ino;
    let mut b = std::fs::read(&img).unwrap();
    let io = inode_offset(&fs, ino);
    b[io + 0x28 + 6..io + 0x28 + 8].copy_from_slice(&6u16.to_le_bytes());
    let fs = open_ext4(Arc::new(MemDisk(b))).unwrap();
    match fs.map(ino) {
        Err(Error::Guest(m)) => assert!(m.contains("deeper than 5"), "{m}"),
        r => panic!("{r:?}"),
    }
}
