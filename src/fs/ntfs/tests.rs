//! Tests over images built with mkntfs and populated through ntfs-3g (see `fixture.rs`),
//! compared with the host folder they were made from, plus byte patches (located by
//! parsing) for what ntfs-3g cannot make: a dirty volume, a short initialized size, EFS
//! and WOF flags, a torn record.

use super::fixture::{self as fx, Mount};
use super::inode::{AT_DATA, AT_REPARSE_POINT, AT_VOLUME_INFORMATION};
use super::*;
use crate::blockdev::{BlockRead, MemDisk};
use crate::fs::testutil::{self, Compare};
use crate::fs::Le;
use std::os::unix::fs::symlink;
use std::path::Path;

const NTFS_CMP: Compare = Compare {
    mode: false,
    owner: false,
    mtime_ns: Some(100),
    fold_case: false,
};
const IGNORE: &[&str] = &["$RECYCLE.BIN", "System Volume Information"];
const LONG_NAME: &str = "Long File Name.txt";

fn tools() -> bool {
    ["mkntfs", "ntfs-3g", "setfattr", "cp"]
        .iter()
        .all(|t| testutil::have(t))
}

/// The unicode name: 140 UTF-16 units (240 UTF-8 bytes), with a character outside the BMP.
fn unicode_name() -> String {
    "ünïcødé-名前-🦀-".repeat(10)
}

/// The host tree: nested dirs, a directory of `big` entries, tiny and large files, one
/// file with `links` names, Interix-style symlinks, long unicode names.
fn source(src: &Path, big: usize, links: usize, large: usize) {
    fx::write(&src.join("tiny.txt"), b"hello ntfs\n");
    fx::write(&src.join("empty"), b"");
    fx::write(&src.join("a/b/c/d/deep.txt"), b"deep\n");
    fx::write(&src.join("a/b/sibling.bin"), &fx::data(3, 70_000));
    fx::write(&src.join("large.bin"), &fx::data(1, large));
    fx::write(&src.join(LONG_NAME), b"needs a short name\n");
    fx::write(&src.join("readonly.txt"), b"read only\n");
    fx::write(&src.join(unicode_name()), b"unicode\n");
    for i in 0..big {
        fx::write(
            &src.join(format!("big/entry-{i:05}.txt")),
            format!("{i}\n").as_bytes(),
        );
    }
    fx::write(&src.join("links/target"), b"one file, many names\n");
    for i in 1..links {
        std::fs::hard_link(src.join("links/target"), src.join(format!("links/l{i:03}"))).unwrap();
    }
    symlink("tiny.txt", src.join("lnk")).unwrap();
    symlink("/etc/hostname", src.join("abs-lnk")).unwrap();
    symlink("a/b", src.join("dir-lnk")).unwrap();
    std::fs::create_dir(src.join("empty-dir")).unwrap();
    testutil::sh(
        "touch",
        &[
            "-d",
            "2001-02-03 04:05:06.1234567 UTC",
            src.join("tiny.txt").to_str().unwrap(),
        ],
    );
    testutil::sh(
        "touch",
        &[
            "-d",
            "1999-12-31 23:59:59.9999999 UTC",
            src.join("big").to_str().unwrap(),
        ],
    );
}

/// The mount-side extras of the main image.
fn extras(m: &Mount, src: &Path) {
    fx::sparse(m, src, "sparse.bin", 9 << 20, &[(1 << 20) + 100, 7 << 20]);
    fx::setfattr("user.stream1", "stream data", &m.path("tiny.txt"));
    let big = format!("0x{}", hex::encode(fx::data(9, 6000)));
    fx::setfattr("user.bigstream", &big, &m.path("tiny.txt"));
    fx::setfattr("system.ntfs_dos_name", "LONGFI~1.TXT", &m.path(LONG_NAME));
    fx::setfattr(
        "system.ntfs_attrib_be",
        "0x00000021",
        &m.path("readonly.txt"),
    );
    fx::win_symlink(m, src, "winlink", "tiny.txt");
    fx::junction(m, src, "junction", "C:\\Windows");
}

fn path_ino(fs: &dyn Filesystem, path: &str) -> Ino {
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

/// Disk offset of attribute `ty` (first of that type) in the base record of `ino`, and
/// the offset of its resident value.
fn attr_at(fs: &Ntfs, ino: u64, ty: u32) -> (u64, Option<u64>) {
    let rec = fs.read_record(ino).unwrap();
    let le = Le::new(&rec.buf, "test");
    let mut at = le.u16(0x14).unwrap() as usize;
    while le.u32(at).unwrap() != ty {
        at += le.u32(at + 4).unwrap() as usize;
    }
    let rs = fs.geo.record_size as u64;
    let off = ino * rs;
    let m = fs
        .mft
        .mappings(fs.geo.cluster_size)
        .into_iter()
        .find(|m| m.file_offset <= off && off < m.file_offset + m.len)
        .unwrap();
    let disk = m.disk_offset.unwrap() + (off - m.file_offset) + at as u64;
    let value = (le.u8(at + 8).unwrap() == 0).then(|| disk + le.u16(at + 0x14).unwrap() as u64);
    assert!(
        disk % 512 < 500,
        "the patched field must not sit in a fixup slot"
    );
    (disk, value)
}

fn open_mem(img: Vec<u8>) -> Ntfs {
    Ntfs::open(Arc::new(MemDisk(img))).unwrap()
}

fn unsupported(r: Result<usize>, word: &str) {
    match r {
        Err(Error::Unsupported(m)) => assert!(m.contains(word), "{m}"),
        other => panic!("expected Unsupported naming {word}, got {other:?}"),
    }
}

#[test]
fn ntfs_image() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, src) = (tmp.path().join("ntfs.img"), tmp.path().join("src"));
    source(&src, 1500, 200, 20 << 20);
    let mnt = tmp.path().join("mnt");
    let frag = |m: &Mount| fx::fragment(m, "frag.bin", 4 << 20);
    fx::build(
        &img,
        &mnt,
        &src,
        64 << 20,
        &["-L", "cairn-ntfs"],
        frag,
        |m| extras(m, &src),
    );
    let image = testutil::load(&img);
    let fs = open_mem(image.clone());
    assert_eq!(fs.label().as_deref(), Some("cairn-ntfs"));
    assert_eq!(fs.warnings(), Vec::<String>::new());
    testutil::assert_same_tree(&fs, &src, NTFS_CMP, IGNORE);

    // System files are hidden; the root lists no "." entry.
    let root: Vec<Vec<u8>> = fs
        .read_dir(ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(!root.iter().any(|n| n.starts_with(b"$") || n == b"."));
    assert!(fs.lookup(ROOT, b"$MFT").unwrap().is_none());

    // The big directory lives in index blocks.
    let big = path_ino(&fs, "big");
    assert_eq!(fs.read_dir(big).unwrap().len(), 1500);
    assert!(fs
        .inode(big)
        .unwrap()
        .find(inode::AT_INDEX_ALLOCATION, b"$I30")
        .is_some());
    assert!(fs.lookup(big, b"entry-01234.txt").unwrap().is_some());
    assert!(fs.lookup(big, b"entry-99999.txt").unwrap().is_none());

    // Times to 100 ns.
    let t = fs.stat(path_ino(&fs, "tiny.txt")).unwrap().mtime;
    assert_eq!((t.sec, t.nsec), (981_173_106, 123_456_700));

    // Hard links: one record with 200 names, spread over extension records.
    let target = path_ino(&fs, "links/target");
    let links = fs.read_dir(path_ino(&fs, "links")).unwrap();
    assert_eq!(links.len(), 200);
    assert!(links.iter().all(|e| e.ino == target));
    assert_eq!(fs.stat(target).unwrap().nlink, 200);
    let rec = fs.read_record(target).unwrap();
    assert!(rec
        .attrs()
        .unwrap()
        .iter()
        .any(|a| a.ty == inode::AT_ATTRIBUTE_LIST));

    // Large, fragmented, sparse.
    let large = path_ino(&fs, "large.bin");
    assert_eq!(fs.stat(large).unwrap().size, 20 << 20);
    // The MFT grew in pieces while the tree was copied.
    assert!(fs.mft.runs().len() > 1, "MFT in one run");
    let frag = fs.map(path_ino(&fs, "frag.bin")).unwrap();
    assert!(
        frag.len() >= 20,
        "frag.bin has {} runs: {frag:?}",
        frag.len()
    );
    let back = |m: &[Mapping]| m.windows(2).any(|w| w[1].disk_offset < w[0].disk_offset);
    assert!(back(&frag), "no negative LCN delta in frag.bin");
    let sp = path_ino(&fs, "sparse.bin");
    let m = fs.map(sp).unwrap();
    assert!(
        m.iter().any(|m| !m.data && m.disk_offset.is_none()),
        "{m:?}"
    );
    let data = crate::fs::data_ranges(&fs, sp, 9 << 20).unwrap();
    let stored: u64 = data.iter().map(|r| r.end - r.start).sum();
    assert!(stored < 1 << 20, "sparse.bin stores {stored} bytes");

    // Modes.
    assert_eq!(fs.stat(path_ino(&fs, "readonly.txt")).unwrap().mode, 0o444);
    assert_eq!(fs.stat(path_ino(&fs, "tiny.txt")).unwrap().mode, 0o644);
    assert_eq!(fs.stat(path_ino(&fs, "a")).unwrap().mode, 0o755);

    // Short names: not listed, but found, in any case.
    let long = path_ino(&fs, LONG_NAME);
    assert!(!root.iter().any(|n| n == b"LONGFI~1.TXT"));
    for short in [&b"LONGFI~1.TXT"[..], b"longfi~1.txt"] {
        assert_eq!(fs.lookup(ROOT, short).unwrap().unwrap().ino, long);
    }
    let names = &fs.inode(long).unwrap().names;
    assert!(names.iter().any(|n| n.namespace == NS_DOS));
    assert_eq!(fs.stat(long).unwrap().nlink, 1);

    // Alternate data streams.
    let tiny = path_ino(&fs, "tiny.txt");
    let mut streams = fs.streams(tiny).unwrap();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<(&str, u64)> = streams.iter().map(|s| (s.name.as_str(), s.size)).collect();
    assert_eq!(names, vec![("bigstream", 6000), ("stream1", 11)]);
    let mut buf = vec![0u8; 7000];
    assert_eq!(fs.read_stream(tiny, "stream1", 0, &mut buf).unwrap(), 11);
    assert_eq!(&buf[..11], b"stream data");
    assert_eq!(
        fs.read_stream(tiny, "bigstream", 0, &mut buf).unwrap(),
        6000
    );
    assert_eq!(&buf[..6000], &fx::data(9, 6000)[..]);
    assert!(fs.read_stream(tiny, "nope", 0, &mut buf).is_err());

    // Symlinks of both kinds.
    assert_eq!(fs.read_link(path_ino(&fs, "lnk")).unwrap(), b"tiny.txt");
    assert_eq!(fs.read_link(path_ino(&fs, "winlink")).unwrap(), b"tiny.txt");
    let j = path_ino(&fs, "junction");
    assert_eq!(fs.stat(j).unwrap().kind, FileType::Symlink);
    assert_eq!(fs.read_link(j).unwrap(), b"C:\\Windows");

    // Misuse is an error, not a panic.
    assert!(fs.read_dir(tiny).is_err());
    assert!(fs.read(big, 0, &mut buf).is_err());
    assert!(fs.read_link(tiny).is_err());
    assert!(fs.stat(1 << 40).is_err());

    used_clusters(&fs, large);
    patched(&fs, image, large, tiny);
}

/// `$Bitmap`: sorted disjoint byte ranges inside the volume, covering the MFT and the
/// large file's clusters, and far from all of the volume.
fn used_clusters(fs: &Ntfs, large: Ino) {
    let used = fs.used_clusters().unwrap();
    assert!(used.windows(2).all(|w| w[0].end < w[1].start));
    let size = fs.dev.size();
    assert!(used.last().unwrap().end <= size);
    let covered = |o: u64| used.iter().any(|r| r.start <= o && o < r.end);
    assert!(covered(fs.geo.mft_lcn * fs.geo.cluster_size));
    for m in fs.map(large).unwrap() {
        assert!(covered(m.disk_offset.unwrap()));
    }
    let total: u64 = used.iter().map(|r| r.end - r.start).sum();
    assert!(total > 20 << 20 && total < 48 << 20, "{total} bytes in use");
}

/// The image with a few bytes changed, sharing the unchanged image.
struct Overlay {
    base: Arc<Vec<u8>>,
    patch: Vec<(u64, Vec<u8>)>,
}

impl BlockRead for Overlay {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !crate::blockdev::fits(offset, buf.len(), self.size()) {
            return Err(crate::blockdev::past_end(
                "overlay",
                offset,
                buf.len(),
                self.size(),
            ));
        }
        let end = offset as usize + buf.len();
        buf.copy_from_slice(&self.base[offset as usize..end]);
        for (at, bytes) in &self.patch {
            for (i, b) in bytes.iter().enumerate() {
                let p = *at as usize + i;
                if (offset as usize..end).contains(&p) {
                    buf[p - offset as usize] = *b;
                }
            }
        }
        Ok(())
    }
}

fn patch(image: &Arc<Vec<u8>>, patch: Vec<(u64, Vec<u8>)>) -> Ntfs {
    let base = image.clone();
    Ntfs::open(Arc::new(Overlay { base, patch })).unwrap()
}

/// Byte patches located by parsing the image.
fn patched(fs: &Ntfs, image: Vec<u8>, large: Ino, tiny: Ino) {
    let image = Arc::new(image);
    let byte = |at: u64| image[at as usize];
    let mut buf = vec![0u8; 8192];
    // Dirty flag: $VOLUME_INFORMATION flags at value byte 10.
    let (_, v) = attr_at(fs, VOLUME, AT_VOLUME_INFORMATION);
    let at = v.unwrap() + 10;
    let dirty = patch(&image, vec![(at, vec![byte(at) | 1])]);
    let w = dirty.warnings();
    assert!(w.iter().any(|w| w.contains("dirty flag set")), "{w:?}");
    assert_eq!(dirty.read(tiny, 0, &mut buf).unwrap(), 11);

    // Initialized size (header byte 0x38) cut to 1 MiB + 5: zeros past it.
    let (h, _) = attr_at(fs, large, AT_DATA);
    let init = (1u64 << 20) + 5;
    let short = patch(&image, vec![(h + 0x38, init.to_le_bytes().to_vec())]);
    assert_eq!(short.read(large, 1 << 20, &mut buf).unwrap(), 8192);
    assert_eq!(&buf[..5], &fx::data(1, (1 << 20) + 5)[1 << 20..]);
    assert!(buf[5..].iter().all(|&b| b == 0));
    let m = short.map(large).unwrap();
    let past: Vec<&Mapping> = m.iter().filter(|m| !m.data).collect();
    assert!(!past.is_empty() && past[0].file_offset == init, "{m:?}");
    assert_eq!(short.read(large, (20 << 20) - 10, &mut buf).unwrap(), 10);

    // EFS: the encrypted flag on $DATA (header flags, byte 0x0C).
    let efs = patch(&image, vec![(h + 0x0D, vec![byte(h + 0x0D) | 0x40])]);
    unsupported(efs.read(large, 0, &mut buf), "EFS");
    assert_eq!(efs.read(tiny, 0, &mut buf).unwrap(), 11);

    // WOF: a reparse tag of system compression on the Windows symlink's record.
    let wl = path_ino(fs, "winlink");
    let (_, v) = attr_at(fs, wl, AT_REPARSE_POINT);
    let tag = reparse::TAG_WOF.to_le_bytes().to_vec();
    let wof = patch(&image, vec![(v.unwrap(), tag)]);
    assert_eq!(wof.stat(wl).unwrap().kind, FileType::File);
    unsupported(wof.read(wl, 0, &mut buf), "system compression");

    // A torn record: only that file fails.
    let (h, _) = attr_at(fs, tiny, AT_DATA);
    let tail = (h / 512) * 512 + 510;
    let torn = patch(&image, vec![(tail, vec![byte(tail) ^ 0xFF])]);
    let e = torn.stat(tiny).unwrap_err().to_string();
    assert!(e.contains("update sequence"), "{e}");
    assert_eq!(torn.read(large, 0, &mut buf).unwrap(), 8192);

    // A stale index entry (its sequence number no longer the record's) is not listed.
    let key: Vec<u8> = [8u8, 0]
        .into_iter()
        .chain("tiny.txt".encode_utf16().flat_map(|u| u.to_le_bytes()))
        .collect();
    let root = fs.inode(ROOT).unwrap();
    let alloc = root.find(inode::AT_INDEX_ALLOCATION, b"$I30").unwrap();
    let cs = fs.geo.cluster_size;
    let found = alloc.runs().iter().find_map(|r| {
        let s = (r.lcn.unwrap() * cs) as usize;
        let area = &image[s..s + (r.len * cs) as usize];
        let p = area.windows(key.len()).position(|w| w == key)?;
        Some((s + p) as u64 - 0x40 - 0x10)
    });
    let entry = found.expect("tiny.txt's entry in the root's index blocks");
    assert!((entry + 6) % 512 < 508, "sequence field in a fixup slot");
    let seq = u16::from_le_bytes([byte(entry + 6), byte(entry + 7)]);
    let stale = patch(&image, vec![(entry + 6, (seq + 1).to_le_bytes().to_vec())]);
    let names: Vec<Vec<u8>> = stale
        .read_dir(ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(!names.iter().any(|n| n == b"tiny.txt") && names.iter().any(|n| n == b"lnk"));
    assert!(stale.lookup(ROOT, b"tiny.txt").unwrap().is_none());
    assert_eq!(stale.stat(tiny).unwrap().size, 11);
}

/// A file in a directory with the compressed attribute is written LZNT1-compressed by
/// ntfs-3g: reading it is refused by name, the rest of the volume reads.
#[test]
fn compressed_refused() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, src) = (tmp.path().join("c.img"), tmp.path().join("src"));
    fx::write(&src.join("plain.txt"), b"plain\n");
    fx::build(
        &img,
        &tmp.path().join("mnt"),
        &src,
        8 << 20,
        &[],
        |_| Vec::new(),
        |m| {
            std::fs::create_dir(m.path("zcomp")).unwrap();
            fx::setfattr("system.ntfs_attrib_be", "0x00000810", &m.path("zcomp"));
            fx::write(&m.path("zcomp/c.txt"), &b"compress me ".repeat(20_000));
        },
    );
    let fs = open_mem(testutil::load(&img));
    let c = path_ino(&fs, "zcomp/c.txt");
    assert_eq!(fs.stat(c).unwrap().size, 240_000);
    let mut buf = vec![0u8; 4096];
    unsupported(fs.read(c, 0, &mut buf), "compression (LZNT1)");
    assert!(matches!(fs.map(c), Err(Error::Unsupported(_))));
    assert_eq!(fs.read(path_ino(&fs, "plain.txt"), 0, &mut buf).unwrap(), 6);
}

/// Other geometries: clusters smaller than a record (512 B: records of 2 clusters, index
/// blocks of 8), large clusters in the power-of-two encoding (128 KiB, 2 MiB: index VCNs in
/// 512-byte units) and 4 KiB sectors (4 KiB records).
#[test]
fn geometries() {
    if !tools() {
        return;
    }
    for (args, spc) in [
        (&["-c", "512"][..], 1u8),
        (&["-c", "131072"][..], 0xF8),
        (&["-c", "2097152"][..], 0xF4),
        (&["-s", "4096"][..], 1),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (img, src) = (tmp.path().join("g.img"), tmp.path().join("src"));
        source(&src, 300, 30, 200_000);
        let mnt = tmp.path().join("mnt");
        fx::build(
            &img,
            &mnt,
            &src,
            64 << 20,
            args,
            |_| Vec::new(),
            |m| {
                fx::sparse(m, &src, "sparse.bin", 5 << 20, &[3 << 20]);
            },
        );
        let image = testutil::load(&img);
        assert_eq!(image[0x0D], spc, "{args:?}");
        let fs = open_mem(image);
        testutil::assert_same_tree(&fs, &src, NTFS_CMP, IGNORE);
        assert!(!fs.used_clusters().unwrap().is_empty());
    }
}

#[test]
fn probe_and_garbage() {
    let dev = MemDisk(vec![0u8; 1 << 20]);
    assert!(!probe(&dev));
    assert!(open(Arc::new(dev)).is_err());
    let mut b = vec![0u8; 4096];
    b[3..11].copy_from_slice(b"NTFS    ");
    let dev = MemDisk(b);
    assert!(probe(&dev));
    assert!(open(Arc::new(dev)).is_err());
    assert!(!probe(&MemDisk(vec![0u8; 100])));
}

#[test]
fn fuzz_ntfs() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, src) = (tmp.path().join("fuzz.img"), tmp.path().join("src"));
    source(&src, 300, 40, 300_000);
    let frag = |m: &Mount| fx::fragment(m, "frag.bin", 1 << 20);
    fx::build(
        &img,
        &tmp.path().join("mnt"),
        &src,
        8 << 20,
        &["-L", "fuzz"],
        frag,
        |m| {
            fx::sparse(m, &src, "sparse.bin", 1 << 20, &[70_000]);
            fx::setfattr("user.s", "stream", &m.path("tiny.txt"));
            fx::setfattr("system.ntfs_dos_name", "LONGFI~1.TXT", &m.path(LONG_NAME));
            fx::win_symlink(m, &src, "winlink", "tiny.txt");
        },
    );
    let image = testutil::load(&img);
    let fs = open_mem(image.clone());
    testutil::assert_same_tree(&fs, &src, NTFS_CMP, IGNORE);
    // Hot: the boot sector, the first 64 MFT records, the index blocks of the root and
    // of the big directory.
    let cs = fs.geo.cluster_size;
    let mft = fs.geo.mft_lcn * cs;
    let mut hot = vec![
        0..512,
        mft as usize..(mft + 64 * fs.geo.record_size as u64) as usize,
    ];
    for dir in [ROOT, path_ino(&fs, "big")] {
        let i = fs.inode(dir).unwrap();
        let alloc = i
            .find(inode::AT_INDEX_ALLOCATION, b"$I30")
            .expect("index blocks");
        for r in alloc.runs() {
            let s = r.lcn.unwrap() * cs;
            hot.push(s as usize..(s + r.len * cs) as usize);
        }
    }
    let cases = testutil::fuzz_cases(1500);
    let stats = testutil::mutate(image, &hot, cases, 0x6e74_6673, open);
    eprintln!("fuzz_ntfs: {stats:?}");
    assert_eq!(stats.cases, cases);
}
