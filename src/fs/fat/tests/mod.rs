//! Images made by mkfs.fat (dosfstools) and mformat (mtools), filled with mcopy, compared
//! with the host tree they were filled from. `units` has hand-made bytes (long-name rules,
//! dates, boot sectors); `hostile` patched chains and the mutation runs over FAT12, FAT16
//! and FAT32 fixtures.

use super::*;
use crate::blockdev::{FileDisk, MemDisk};
use crate::fs::testutil::{self, Compare};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

mod hostile;
mod units;

/// Runs an mtools or dosfstools command with UTC times (mtools writes local time) and a
/// UTF-8 locale (mtools converts long names from it).
pub(super) fn tool(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed for this test: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub(super) fn tools() -> bool {
    testutil::have("mkfs.vfat") && testutil::have("mcopy") && testutil::have("mformat")
}

/// A sparse file of `size` bytes.
pub(super) fn blank(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

pub(super) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Pseudo-random bytes (so a misplaced cluster shows).
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 2001-02-03 04:05:07.5 UTC plus `i` hours and a second: odd seconds and fractions, so
/// FAT's 2 s truncation is exercised.
fn stamp(i: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(981_173_107_500 + i * 3_601_000)
}

fn set_mtime(p: &Path, t: SystemTime) {
    std::fs::File::open(p).unwrap().set_modified(t).unwrap();
}

/// Writes the source tree; `big` is the size of the large file.
pub(super) fn build_tree(root: &Path, big: usize, many: usize) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w("hello.txt", b"hello, world\n");
    w("UPPER.TXT", b"upper case 8.3\n");
    w("lower.TXT", b"lower-case base, upper-case extension\n");
    w("MixedCase.Text", b"needs a long name\n");
    w("Long name with spaces é 日本.txt", b"unicode\n");
    w("readonly.txt", b"do not touch\n");
    w("empty.bin", b"");
    w("odd.bin", &noise(4097, 7));
    w("big.bin", &noise(big, 11));
    w("a/b/c/d/deep file.dat", &noise(3000, 13));
    w("a/b/sibling.txt", b"sibling\n");
    // Mostly 8.3 names: mtools takes seconds to invent ~N short names for hundreds of
    // long ones.
    for i in 0..many {
        let name = if i % 12 == 0 {
            format!("many/long entry {i:04}.txt")
        } else {
            format!("many/e{i:04}.txt")
        };
        w(&name, format!("{i}\n").as_bytes());
    }
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    // Times last, deepest first: creating files changes their folder's mtime.
    let mut all: Vec<std::path::PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, stamp(i as u64));
    }
}

/// Copies the top-level entries of `src` into the image's root.
pub(super) fn fill(img: &Path, src: &Path) {
    let mut args = vec!["-s".to_string(), "-m".into(), "-i".into(), s(img).into()];
    let mut names: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    names.sort();
    args.extend(names);
    args.push("::/".into());
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    tool("mcopy", &args);
}

/// Adds a fragmented file: a folder of eight small files, every other one deleted
/// (leaving holes and deleted directory entries), then a file that has to fill the holes.
/// The host tree gets the same result.
pub(super) fn fragment(img: &Path, src: &Path, tmp: &Path, cluster: usize) {
    let stage = tmp.join("stage/frag");
    std::fs::create_dir_all(&stage).unwrap();
    for i in 0..8 {
        let data = noise(cluster * 2, 100 + i);
        let p = stage.join(format!("piece {i}.bin"));
        std::fs::write(&p, &data).unwrap();
        set_mtime(&p, stamp(i));
    }
    set_mtime(&stage, stamp(60));
    tool("mcopy", &["-s", "-m", "-i", s(img), s(&stage), "::/"]);
    for i in (0..8).step_by(2) {
        tool("mdel", &["-i", s(img), &format!("::/frag/piece {i}.bin")]);
        std::fs::remove_file(stage.join(format!("piece {i}.bin"))).unwrap();
    }
    // mtools allocates FAT32 clusters from FSInfo's next-free hint, after the last
    // allocation: point it back at the start so the holes get used.
    let mut b = std::fs::read(img).unwrap();
    if b.get(22..24) == Some(&[0, 0]) {
        let sector = u16::from_le_bytes([b[11], b[12]]) as usize;
        let fsinfo = u16::from_le_bytes([b[48], b[49]]) as usize * sector;
        b[fsinfo + 492..fsinfo + 496].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(img, &b).unwrap();
    }
    drop(b);
    let p = stage.join("scattered.bin");
    std::fs::write(&p, noise(cluster * 7 + 5, 999)).unwrap();
    set_mtime(&p, stamp(50));
    tool("mcopy", &["-m", "-i", s(img), s(&p), "::/frag/"]);
    set_mtime(&stage, stamp(60));
    tool("cp", &["-a", s(&stage), s(src)]);
}

/// Entry ino of a path, through lookups.
pub(super) fn find(fs: &dyn Filesystem, path: &str) -> Ino {
    let mut ino = fs.root();
    for part in path.split('/') {
        ino = fs
            .lookup(ino, part.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path}: {part} not found"))
            .ino;
    }
    ino
}

/// Builds an image with `format` (which makes the filesystem on `img`), fills it and
/// checks the reader against the host tree. Returns the open reader.
fn check_image(
    tmp: &Path,
    size: u64,
    format: &dyn Fn(&Path),
    big: usize,
    want: FatType,
) -> Arc<Fat> {
    let src = tmp.join("src");
    build_tree(&src, big, 600);
    let img = tmp.join("fat.img");
    blank(&img, size);
    format(&img);
    fill(&img, &src);
    tool("mattrib", &["-i", s(&img), "+r", "::/readonly.txt"]);
    let dev: Dev = Arc::new(FileDisk::open(&img).unwrap());
    assert!(probe(dev.as_ref()), "probe refuses the image");
    let cs = Fat::open(dev.clone()).unwrap().geo.cluster_size as usize;
    fragment(&img, &src, tmp, cs);
    let dev: Dev = Arc::new(FileDisk::open(&img).unwrap());
    let fat = Arc::new(Fat::open(dev.clone()).unwrap());
    assert_eq!(fat.fat_type(), want);
    let fs: &dyn Filesystem = fat.as_ref();
    testutil::assert_same_tree(
        fs,
        &src,
        Compare {
            mode: false,
            owner: false,
            mtime_ns: Some(2_000_000_000),
            fold_case: false,
        },
        &[],
    );
    check_details(&fat, &src);
    fat
}

fn check_details(fat: &Arc<Fat>, src: &Path) {
    let fs: &dyn Filesystem = fat.as_ref();
    let g = &fat.geo;
    let cs = g.cluster_size;
    // Modes.
    assert_eq!(fs.stat(find(fs, "readonly.txt")).unwrap().mode, 0o444);
    assert_eq!(fs.stat(find(fs, "hello.txt")).unwrap().mode, 0o644);
    let a = fs.stat(find(fs, "a")).unwrap();
    assert_eq!((a.kind, a.mode, a.uid, a.gid), (FileType::Dir, 0o755, 0, 0));
    assert!(
        a.size > 0 && a.size % cs == 0,
        "a directory's size is its chain"
    );
    // The many-entry directory spans several clusters.
    let many = fs.stat(find(fs, "many")).unwrap();
    assert!(many.size >= 650 * 32, "550 short names and 50 long ones");
    assert_eq!(fs.read_dir(many.ino).unwrap().len(), 600);

    // Lookups: long name in any case, short name in any case, never "." or "..".
    let long = "Long name with spaces é 日本.txt";
    let ino = find(fs, long);
    let upper = names::fold(long.as_bytes()).unwrap();
    assert_eq!(find(fs, &upper), ino);
    let l = fat.listing(ROOT).unwrap();
    for e in &l.entries {
        let by_short = fs.lookup(ROOT, e.short.as_bytes()).unwrap().unwrap();
        assert_eq!(
            by_short.ino, e.offset,
            "{}: by short name {}",
            e.name, e.short
        );
        assert_eq!(by_short.name, e.name.as_bytes());
        let up = e.short.to_ascii_uppercase();
        assert_eq!(
            fs.lookup(ROOT, up.as_bytes()).unwrap().unwrap().ino,
            e.offset
        );
    }
    let hello = l.entries.iter().find(|e| e.name == "hello.txt").unwrap();
    assert_eq!(hello.short, "hello.txt", "NT lower-case bits");
    let mixed = l.entries.iter().find(|e| e.name == "lower.TXT").unwrap();
    assert_eq!(mixed.short, "lower.TXT", "NT lower-case base bit alone");
    let longe = l.entries.iter().find(|e| e.name == long).unwrap();
    assert!(longe.short.contains('~'), "{}", longe.short);
    assert_eq!(find(fs, "HELLO.TXT"), hello.offset);
    assert_eq!(
        find(fs, "a/B/c/D/DEEP FILE.DAT"),
        find(fs, "a/b/c/d/deep file.dat")
    );
    for n in [&b"."[..], b"..", b"nothing here", b"\xff"] {
        assert!(fs.lookup(ROOT, n).unwrap().is_none());
    }

    // Times: 2 s resolution, read as UTC.
    let host = std::fs::metadata(src.join("odd.bin")).unwrap();
    let m = fs.stat(find(fs, "odd.bin")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mtime.sec, host.mtime() & !1);
    assert_eq!(m.mtime.nsec, 0);
    // mcopy -m writes the creation time and access date from the mtime too.
    assert_eq!(m.ctime, m.mtime);
    assert_eq!(m.atime.sec, m.mtime.sec - m.mtime.sec % 86400);

    // stat from the ino alone, on a fresh reader with empty caches.
    let fresh = Fat::open(fat.dev.clone()).unwrap();
    let deep = find(fs, "a/b/c/d/deep file.dat");
    assert_eq!(fresh.stat(deep).unwrap(), fs.stat(deep).unwrap());
    assert_eq!(fresh.stat(ROOT).unwrap().kind, FileType::Dir);
    for bad in [
        0,
        ROOT + 1,
        deep + 1,
        deep + 16,
        g.data_end(),
        u64::MAX - 31,
    ] {
        assert!(fresh.stat(bad).is_err(), "ino {bad}");
    }
    assert!(
        fresh.read(find(fs, "a"), 0, &mut [0u8; 4]).is_err(),
        "read of a dir"
    );
    assert!(fresh.read_link(deep).is_err());

    // map(): runs as volume offsets, merged, covering the file; the bytes there are the
    // file's; each run inside the clusters the FAT marks used.
    let used = fat.used_clusters().unwrap();
    assert_eq!(used.first().map(|r| r.start), Some(0));
    let inside = |at: u64, len: u64| used.iter().any(|r| r.start <= at && at + len <= r.end);
    for path in [
        "big.bin",
        "odd.bin",
        "frag/scattered.bin",
        "a/b/c/d/deep file.dat",
    ] {
        let ino = find(fs, path);
        let size = fs.stat(ino).unwrap().size;
        let maps = fs.map(ino).unwrap();
        let data = std::fs::read(src.join(path)).unwrap();
        let mut at = 0;
        for (i, m) in maps.iter().enumerate() {
            assert_eq!(m.file_offset, at, "{path}: runs in file order");
            assert!(m.data && m.len % cs == 0);
            let disk = m.disk_offset.unwrap();
            assert!(inside(disk, m.len), "{path}: run outside the used clusters");
            if let Some(next) = maps.get(i + 1) {
                assert_ne!(disk + m.len, next.disk_offset.unwrap(), "{path}: unmerged");
            }
            let n = m.len.min(size - m.file_offset) as usize;
            let mut buf = vec![0u8; n];
            fat.dev.read_at(disk, &mut buf).unwrap();
            assert!(
                buf[..] == data[at as usize..at as usize + n],
                "{path}: run bytes"
            );
            at += m.len;
        }
        assert!(at >= size && at < size + cs, "{path}: runs cover the size");
    }
    assert_eq!(
        fs.map(find(fs, "big.bin")).unwrap().len(),
        1,
        "mcopy writes it whole"
    );
    assert!(
        fs.map(find(fs, "frag/scattered.bin")).unwrap().len() > 1,
        "fragmented"
    );
    assert!(fs.map(find(fs, "empty.bin")).unwrap().is_empty());
    let total: u64 = used.iter().map(|r| r.end - r.start).sum();
    assert!(total < fat.dev.size());
    // Deleted entries are not listed; a fresh listing of frag/ holds the 4 kept + 1.
    assert_eq!(fs.read_dir(find(fs, "frag")).unwrap().len(), 5);
}

#[test]
fn fat12_floppy_made_by_mformat() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fmt = |img: &Path| {
        tool(
            "mformat",
            &["-i", s(img), "-f", "1440", "-v", "FLOPPY", "::"],
        )
    };
    let fat = check_image(tmp.path(), 1_474_560, &fmt, 300_000, FatType::Fat12);
    assert_eq!(fat.label().as_deref(), Some("FLOPPY"));
    assert!(fat.warnings().is_empty(), "{:?}", fat.warnings());
}

#[test]
fn fat16_made_by_mkfs() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fmt = |img: &Path| tool("mkfs.vfat", &["-F", "16", "-n", "SIXTEEN", s(img)]);
    let fat = check_image(tmp.path(), 32 << 20, &fmt, 10 << 20, FatType::Fat16);
    assert_eq!(fat.label().as_deref(), Some("SIXTEEN"));
    assert!(fat.warnings().is_empty(), "{:?}", fat.warnings());

    // Clearing the "clean" bit of FAT entry 1 is an unclean unmount.
    let mut img = testutil::load(&tmp.path().join("fat.img"));
    let at = fat.geo.fat_offset as usize + 3;
    img[at] &= !0x80;
    let dirty = Fat::open(Arc::new(MemDisk(img.clone()))).unwrap();
    assert!(
        dirty
            .warnings()
            .iter()
            .any(|w| w.contains("not cleanly unmounted (FAT entry 1)")),
        "{:?}",
        dirty.warnings()
    );
    // So is the dirty bit Linux and Windows NT set in the boot sector while mounted.
    img[at] |= 0x80;
    img[37] |= 1;
    let dirty = Fat::open(Arc::new(MemDisk(img))).unwrap();
    assert!(
        dirty.warnings().iter().any(|w| w.contains("dirty flag")),
        "{:?}",
        dirty.warnings()
    );
}

#[test]
fn fat32_made_by_mkfs() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fmt = |img: &Path| tool("mkfs.vfat", &["-F", "32", s(img)]);
    let fat = check_image(tmp.path(), 64 << 20, &fmt, 10 << 20, FatType::Fat32);
    assert!(fat.geo.clusters >= 65525);
    assert_eq!(fat.label(), None);
    assert!(fat.warnings().is_empty(), "{:?}", fat.warnings());
}

/// 4096-byte sectors. mtools picks the FAT type by cluster count, so a FAT32 it can fill
/// needs 65525 clusters: 272 MiB, sparse (about 12 MiB of it written).
#[test]
fn fat32_4k_sectors() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fmt = |img: &Path| tool("mkfs.vfat", &["-F", "32", "-S", "4096", "-s", "1", s(img)]);
    let fat = check_image(tmp.path(), 272 << 20, &fmt, 10 << 20, FatType::Fat32);
    assert_eq!(fat.geo.cluster_size, 4096);
    assert!(fat.warnings().is_empty(), "{:?}", fat.warnings());
}

/// 4096-byte sectors and 32 KiB clusters on 64 MiB: mkfs.fat makes a FAT32 with fewer
/// clusters than the specification's minimum (mtools cannot fill it), read as FAT32 with a
/// warning.
#[test]
fn fat32_below_the_cluster_minimum() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("small.img");
    blank(&img, 64 << 20);
    tool(
        "mkfs.vfat",
        &["-F", "32", "-S", "4096", "-s", "8", "-n", "SMALL", s(&img)],
    );
    let fat = Fat::open(Arc::new(FileDisk::open(&img).unwrap())).unwrap();
    assert_eq!(
        (fat.fat_type(), fat.geo.cluster_size),
        (FatType::Fat32, 32768)
    );
    assert!(fat.geo.clusters < 65525);
    assert!(
        fat.warnings()
            .iter()
            .any(|w| w.contains("fewer than the 65525")),
        "{:?}",
        fat.warnings()
    );
    assert_eq!(fat.label().as_deref(), Some("SMALL"));
    assert!(fat.read_dir(ROOT).unwrap().is_empty());
    assert_eq!(fat.stat(ROOT).unwrap().size, 32768);
    let used = fat.used_clusters().unwrap();
    assert_eq!(
        used,
        vec![0..fat.geo.data_offset + 32768],
        "metadata and the root"
    );
}
