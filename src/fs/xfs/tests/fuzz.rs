//! Mutated images: `testutil::mutate` over a fixture with every kind of metadata.

use super::kernel::{interleaved, Mount};
use super::*;

/// The fuzz fixture: the small tree through mkfs.xfs -p and, where loop mounts work,
/// fragmented (btree-format), holey and preallocated files added through the kernel.
fn fuzz_fixture() -> Option<(tempfile::TempDir, PathBuf)> {
    let f = fixture(&SMALL, &[])?;
    if is_root() {
        let mnt = f._tmp.path().join("mnt");
        if let Some(_m) = Mount::new(&f.img, &mnt) {
            let twin = f._tmp.path().join("twin");
            std::fs::create_dir(&twin).unwrap();
            interleaved(&mnt, &twin, ["frag_a", "frag_b"], 300, 4096);
            let holey = std::fs::File::create(mnt.join("holey")).unwrap();
            for i in 0..4u64 {
                std::os::unix::fs::FileExt::write_all_at(&holey, &[1; 4096], i << 20).unwrap();
            }
            let pre = std::fs::File::create(mnt.join("prealloc")).unwrap();
            // SAFETY: a valid descriptor.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&pre);
            assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
            std::fs::hard_link(mnt.join("small.txt"), mnt.join("a/small_link")).unwrap();
        }
    }
    let Fixture { _tmp, img, .. } = f;
    Some((_tmp, img))
}

/// Where the fixture's metadata lies: the first blocks of AG 0 (superblock, AG headers,
/// btree roots), the root inode chunk, every directory's and symlink's inode and blocks,
/// the inodes of btree-format files and their btree blocks, the head of the log.
fn hot_ranges(fs: &Xfs) -> Vec<Range<usize>> {
    let bs = fs.sb.blocksize as usize;
    let isz = fs.sb.inodesize as usize;
    let sect = fs.sb.sectsize as usize;
    // The superblock, AGF, AGI and AGFL, then the btree roots after them.
    let mut hot = vec![0..512, sect..4 * sect, bs..8 * bs];
    let root = fs.sb.inode_offset(fs.root()).unwrap() as usize;
    hot.push(root..root + 64 * isz);
    if let Ok(log) = fs.sb.extent_offset(fs.sb.logstart, 1) {
        hot.push(log as usize..log as usize + 2048);
    }
    let mut inodes = vec![fs.root()];
    for (_, (meta, _)) in testutil::walk(fs).unwrap() {
        let inode = fs.inode(meta.ino).unwrap();
        if matches!(meta.kind, FileType::Dir | FileType::Symlink) || inode.format == FMT_BTREE {
            inodes.push(meta.ino);
        }
    }
    for ino in inodes {
        let inode = fs.inode(ino).unwrap();
        let at = fs.sb.inode_offset(ino).unwrap() as usize;
        hot.push(at..at + isz);
        if inode.format == FMT_BTREE {
            let (_, blocks) = bmap::walk(fs.dev.as_ref(), &fs.sb, ino, &inode.fork).unwrap();
            for b in blocks {
                let at = fs.sb.extent_offset(b, 1).unwrap() as usize;
                hot.push(at..at + bs);
            }
        }
        if inode.kind().unwrap() == FileType::File {
            continue;
        }
        for m in fs.map(ino).unwrap() {
            if let Some(d) = m.disk_offset {
                hot.push(d as usize..(d + m.len.min(1 << 16)) as usize);
            }
        }
    }
    hot
}

#[test]
fn fuzz_xfs() {
    let Some((_tmp, img)) = fuzz_fixture() else {
        return;
    };
    let fs = open_img(&img);
    assert!(fs.warnings().is_empty());
    let hot = hot_ranges(&fs);
    drop(fs);
    let cases = testutil::fuzz_cases(1500);
    let stats = testutil::mutate(testutil::load(&img), &hot, cases, 0x0058_4653_4221, open);
    eprintln!("fuzz_xfs (v5): {stats:?} over {} hot ranges", hot.len());
    assert_eq!(stats.cases, cases);

    // Version 4 without ftype: other headers, no owners, types from the inodes.
    let Some(f) = fixture(&SMALL, &["-m", "crc=0", "-n", "ftype=0"]) else {
        return;
    };
    let fs = open_img(&f.img);
    let hot = hot_ranges(&fs);
    drop(fs);
    let cases = cases / 5;
    let stats = testutil::mutate(testutil::load(&f.img), &hot, cases, 0x0058_4653_4234, open);
    eprintln!("fuzz_xfs (v4): {stats:?} over {} hot ranges", hot.len());
    assert_eq!(stats.cases, cases);
}
