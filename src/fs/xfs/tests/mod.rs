//! Images built by the real tools: `mkfs.xfs -p PROTOFILE` from a source tree written
//! here (v5 default, v5 with other geometry and features, v4), and, where loop mounts
//! work, images filled through the kernel for what a protofile cannot make (fragmented
//! files in btree format, holes, unwritten extents, hard links, sticky bits, sockets,
//! mtimes, a dirty log).
//!
//! mkfs.xfs of xfsprogs 6.1 takes only a protofile with `-p` (not a directory), sets every
//! time itself, cannot make holes, hard links, sockets or the sticky bit, and refuses
//! filesystems under 300 MiB unless the fstests variables are set, which the tests do to
//! keep images at 64 MiB (sparse). It also writes each file as a single extent (so the
//! images have two 32 MiB AGs, where the 30 MiB file fits) and writes v5 remote symlinks
//! without their XSLM header (which the reader accepts, see `file::read_link`).

use super::inode::FMT_LOCAL;
use super::*;
use crate::blockdev::FileDisk;
use crate::fs::testutil::{self, Compare};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const IMG_SIZE: u64 = 64 << 20;
const NO_MTIME: Compare = Compare {
    mode: true,
    owner: true,
    mtime_ns: None,
    fold_case: false,
};

fn tool(name: &str) -> String {
    for d in ["/usr/sbin", "/sbin"] {
        let p = format!("{d}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    name.to_string()
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Deterministic bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the source tree holds.
struct Shape {
    /// Directories of `n` empty files each, named for the directory form they should get.
    dirs: &'static [(&'static str, usize)],
    big: usize,
}

const FULL: Shape = Shape {
    dirs: &[
        ("sf", 5),
        ("blk", 60),
        ("leaf", 300),
        ("node", 1000),
        ("huge", 12100),
    ],
    big: 30 << 20,
};
const SMALL: Shape = Shape {
    dirs: &[("sf", 5), ("blk", 60), ("leaf", 250), ("node", 700)],
    big: 1 << 20,
};

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) -> bool {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mknod(c.as_ptr(), kind | 0o640, libc::makedev(major, minor)) == 0 }
}

/// Writes the source tree: nested directories, directories sized for each directory
/// form, small/empty/big files, short (inline) and long (remote) symlinks, device nodes
/// and a FIFO, setuid/setgid modes and foreign owners.
fn build_tree(dir: &Path, shape: &Shape) {
    let w = |p: &str, data: &[u8]| std::fs::write(dir.join(p), data).unwrap();
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    w("a/b/c/deep.txt", b"deep down\n");
    w("a/one", b"1");
    for (name, n) in shape.dirs {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        for i in 0..*n {
            let data = if *n <= 5 {
                pattern(i as u64, 100 + i)
            } else {
                Vec::new()
            };
            std::fs::write(d.join(format!("e{i}")), data).unwrap();
        }
    }
    w("small.txt", b"hello, xfs\n");
    w("empty", b"");
    w("odd.bin", &pattern(7, 12345));
    w("big.bin", &pattern(8, shape.big));
    std::os::unix::fs::symlink("small.txt", dir.join("link_short")).unwrap();
    let long: String = "long/".repeat(200);
    std::os::unix::fs::symlink(&long[..999], dir.join("link_long")).unwrap();
    let fifo = CString::new(dir.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    if is_root() {
        assert!(mknod(&dir.join("null"), libc::S_IFCHR, 1, 3));
        assert!(mknod(&dir.join("loop"), libc::S_IFBLK, 7, 300));
    } else {
        eprintln!("WARNING: not root: no device nodes in the XFS test tree");
    }
    w("suid", b"#!/bin/sh\n");
    std::fs::set_permissions(dir.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(dir.join("sgid")).unwrap();
    std::fs::set_permissions(dir.join("sgid"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    w("sgid/inside", b"x");
    w("owned", b"not mine");
    std::fs::set_permissions(dir.join("owned"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(dir.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(dir.join("link_short"), Some(42), Some(43)).unwrap();
    }
}

/// The protofile describing `dir` (entries sorted by name).
fn protofile(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let t = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                '-'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_fifo() {
                'p'
            } else {
                panic!("{}: a protofile cannot hold this type", p.display())
            };
            let mode = m.mode();
            let u = if mode & 0o4000 != 0 { 'u' } else { '-' };
            let g = if mode & 0o2000 != 0 { 'g' } else { '-' };
            let name = e.file_name().to_string_lossy().into_owned();
            out.push_str(&format!(
                "{name} {t}{u}{g}{:03o} {} {}",
                mode & 0o777,
                m.uid(),
                m.gid()
            ));
            match t {
                '-' => out.push_str(&format!(" {}\n", p.display())),
                'l' => out.push_str(&format!(" {}\n", std::fs::read_link(&p).unwrap().display())),
                'b' | 'c' => {
                    let (ma, mi) = (libc::major(m.rdev()), libc::minor(m.rdev()));
                    out.push_str(&format!(" {ma} {mi}\n"));
                }
                'd' => {
                    out.push('\n');
                    walk(&p, out);
                    out.push_str("$\n");
                }
                _ => out.push('\n'),
            }
        }
    }
    let mut out = String::from("/cairn-test\n0 0\nd--755 0 0\n");
    walk(dir, &mut out);
    out.push_str("$\n");
    out
}

/// A fresh sparse image file formatted with `opts`, from `proto` if given.
fn mkfs(img: &Path, opts: &[&str], proto: Option<&Path>) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(IMG_SIZE)
        .unwrap();
    let mut c = Command::new(tool("mkfs.xfs"));
    // The fstests variables let mkfs make filesystems under 300 MiB.
    c.env("TEST_DIR", "1")
        .env("TEST_DEV", "1")
        .env("QA_CHECK_FS", "1");
    c.args(["-q", "-f", "-L", "cairn"]).args(opts);
    if let Some(p) = proto {
        c.arg("-p").arg(p);
    }
    run(c.arg(img));
}

struct Fixture {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    img: PathBuf,
}

/// Builds the tree for `shape` and an image of it with `opts`; None without mkfs.xfs.
fn fixture(shape: &Shape, opts: &[&str]) -> Option<Fixture> {
    if !testutil::have("mkfs.xfs") {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, shape);
    let proto = tmp.path().join("proto");
    std::fs::write(&proto, protofile(&src)).unwrap();
    let img = tmp.path().join("xfs.img");
    // Two AGs of 32 MiB: mkfs.xfs -p (6.1) writes each file as one extent and corrupts
    // what follows when a file does not fit the free space of one AG.
    let opts: Vec<&str> = ["-d", "agcount=2"].iter().chain(opts).copied().collect();
    mkfs(&img, &opts, Some(&proto));
    Some(Fixture {
        _tmp: tmp,
        src,
        img,
    })
}

fn open_img(img: &Path) -> Xfs {
    Xfs::new(Arc::new(FileDisk::open(img).unwrap())).unwrap()
}

fn child(fs: &Xfs, dir: Ino, name: &str) -> DirEntry {
    fs.read_dir(dir)
        .unwrap()
        .into_iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} not found"))
}

/// Which directory form `ino` has: "shortform", "block", "leaf" or "node", with
/// "+btree" when its fork is a btree.
fn dir_form(fs: &Xfs, ino: Ino) -> String {
    let inode = fs.inode(ino).unwrap();
    if inode.format == FMT_LOCAL {
        return "shortform".into();
    }
    let exts = fs.extents(&inode).unwrap();
    let leaf = (32u64 << 30) >> fs.sb.blocklog;
    let form = if exts.iter().all(|e| e.off < leaf) {
        "block"
    } else {
        let per = 1u64 << fs.sb.dirblklog;
        let b = bmap::read_blocks(fs.dev.as_ref(), &fs.sb, ino, &exts, leaf, per).unwrap();
        match u16::from_be_bytes([b[8], b[9]]) {
            0xd2f1 | 0x3df1 => "leaf",
            _ => "node",
        }
    };
    let btree = if inode.format == FMT_BTREE {
        "+btree"
    } else {
        ""
    };
    format!("{form}{btree}")
}

/// Every name of every directory is found by `lookup` through the hash index, and
/// missing names are not.
fn check_lookups(fs: &Xfs) {
    let mut stack = vec![fs.root()];
    while let Some(d) = stack.pop() {
        let entries = fs.read_dir(d).unwrap();
        let inode = fs.inode(d).unwrap();
        let indexed = inode.format != FMT_LOCAL;
        let exts = fs.extents(&inode).unwrap();
        for e in &entries {
            assert_eq!(fs.lookup(d, &e.name).unwrap().as_ref(), Some(e));
            if indexed {
                // Found through the index itself, not the fallback scan.
                let raw = lookup::find(fs.dev.as_ref(), &fs.sb, d, &exts, &e.name);
                assert_eq!(raw.unwrap().map(|r| r.ino), Some(e.ino));
            }
            let mut other = e.name.clone();
            other.push(b'~');
            assert_eq!(fs.lookup(d, &other).unwrap(), None);
        }
        for e in &entries {
            if e.kind == FileType::Dir {
                stack.push(e.ino);
            }
        }
        assert_eq!(fs.lookup(d, b"no such name").unwrap(), None);
    }
}

/// The free-space btrees agree with `xfs_db freesp`, and every file's blocks are in use.
fn check_used_blocks(fs: &Xfs, img: &Path) {
    let used = fs.used_blocks().unwrap();
    let total = fs.sb.dblocks * fs.sb.blocksize as u64;
    assert_eq!(used.first().map(|r| r.start), Some(0));
    assert!(used.windows(2).all(|w| w[0].end < w[1].start));
    assert!(used.last().unwrap().end <= total);
    let in_use: u64 = used.iter().map(|r| r.end - r.start).sum();
    let out = run(Command::new(tool("xfs_db"))
        .args(["-r", "-c", "freesp -s"])
        .arg(img));
    let free: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("total free blocks "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("xfs_db freesp: {out}"));
    assert_eq!(total - in_use, free * fs.sb.blocksize as u64);
    let tree = testutil::walk(fs).unwrap();
    for (path, (meta, _)) in tree {
        if meta.kind != FileType::File {
            continue;
        }
        for m in fs.map(meta.ino).unwrap() {
            if let Some(d) = m.disk_offset {
                let end = d + m.len;
                assert!(
                    used.iter().any(|r| r.start <= d && end <= r.end),
                    "{}: blocks {d}..{end} not in use",
                    testutil::show(&path)
                );
            }
        }
    }
}

/// Everything a protofile image can be checked for.
fn check_proto_image(f: &Fixture, shape: &Shape) -> Xfs {
    let fs = open_img(&f.img);
    assert_eq!(fs.kind(), "xfs");
    assert_eq!(fs.label().as_deref(), Some("cairn"));
    assert_eq!(
        fs.warnings(),
        Vec::<String>::new(),
        "a fresh mkfs log is clean"
    );
    testutil::assert_same_tree(&fs, &f.src, NO_MTIME, &[]);
    let root = fs.root();
    if is_root() {
        assert_eq!(
            fs.stat(child(&fs, root, "null").ino).unwrap().rdev,
            Some((1, 3))
        );
        assert_eq!(
            fs.stat(child(&fs, root, "loop").ino).unwrap().rdev,
            Some((7, 300))
        );
    }
    let big = child(&fs, root, "big.bin");
    let ranges = crate::fs::data_ranges(&fs, big.ino, shape.big as u64).unwrap();
    assert_eq!(ranges, vec![0..shape.big as u64]);
    let forms: Vec<String> = shape
        .dirs
        .iter()
        .map(|(n, _)| dir_form(&fs, child(&fs, root, n).ino))
        .collect();
    eprintln!("XFS directory forms {:?}: {forms:?}", shape.dirs);
    check_lookups(&fs);
    check_used_blocks(&fs, &f.img);
    fs
}

#[test]
fn protofile_v5_default() {
    let Some(f) = fixture(&FULL, &[]) else { return };
    let fs = check_proto_image(&f, &FULL);
    let sb = fs.superblock();
    assert!(sb.version == 5 && sb.features.ftype && sb.features.sparse_inodes);
    assert!(sb.features.bigtime && sb.features.finobt && sb.features.reflink);
    let root = fs.root();
    let forms: Vec<String> = ["sf", "blk", "leaf", "node", "huge"]
        .iter()
        .map(|n| dir_form(&fs, child(&fs, root, n).ino))
        .collect();
    assert_eq!(forms, ["shortform", "block", "leaf", "node", "node+btree"]);
    let ll = child(&fs, root, "link_long");
    assert_ne!(
        fs.inode(ll.ino).unwrap().format,
        FMT_LOCAL,
        "long link is remote"
    );
    assert_eq!(fs.map(ll.ino).unwrap().len(), 1);
    assert!(fs.read(ll.ino, 0, &mut [0u8; 4]).is_err());
    assert!(fs.read_dir(child(&fs, root, "small.txt").ino).is_err());
}

#[test]
fn protofile_v5_other_geometry() {
    // 2 KiB blocks, 16 KiB directory blocks (several blocks per directory block),
    // no sparse inodes, legacy timestamps, no finobt, 64-bit extent counters.
    let opts = [
        "-b",
        "size=2048",
        "-n",
        "size=16384",
        "-i",
        "sparse=0,nrext64=1",
        "-m",
        "bigtime=0,finobt=0",
    ];
    let Some(f) = fixture(&FULL, &opts) else {
        return;
    };
    let fs = check_proto_image(&f, &FULL);
    let sb = fs.superblock();
    assert!(sb.dirblklog == 3 && !sb.features.sparse_inodes && !sb.features.bigtime);
    assert!(sb.features.nrext64);
}

#[test]
fn protofile_v4() {
    let Some(f) = fixture(&FULL, &["-m", "crc=0", "-n", "ftype=0"]) else {
        return;
    };
    let fs = check_proto_image(&f, &FULL);
    let sb = fs.superblock();
    assert!(sb.version == 4 && !sb.features.ftype && sb.inodesize == 256);
}

#[test]
fn probe_and_garbage() {
    use crate::blockdev::MemDisk;
    assert!(!probe(&MemDisk(vec![0; 4096])));
    assert!(!probe(&MemDisk(b"XFS".to_vec())));
    let mut b = vec![0u8; 4096];
    b[..4].copy_from_slice(b"XFSB");
    assert!(probe(&MemDisk(b.clone())));
    assert!(open(Arc::new(MemDisk(b))).is_err());
}

#[test]
fn realtime_damage_and_short_volumes() {
    use crate::blockdev::MemDisk;
    let Some(f) = fixture(&SMALL, &[]) else {
        return;
    };
    let base = testutil::load(&f.img);
    let fs = open_img(&f.img);
    let ino = child(&fs, fs.root(), "small.txt").ino;
    let at = fs.sb.inode_offset(ino).unwrap() as usize;
    drop(fs);
    // The realtime flag (di_flags bit 0): refused by name, stat still works.
    let mut img = base.clone();
    img[at + 91] |= 1;
    let fs = Xfs::new(Arc::new(MemDisk(img))).unwrap();
    let e = fs.read(ino, 0, &mut [0u8; 16]).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("XFS realtime device")),
        "{e}"
    );
    assert!(matches!(fs.map(ino), Err(Error::Unsupported(_))));
    assert_eq!(fs.stat(ino).unwrap().size, 11);
    // A damaged inode magic names the inode.
    let mut img = base.clone();
    img[at] = b'X';
    let fs = Xfs::new(Arc::new(MemDisk(img))).unwrap();
    let e = fs.stat(ino).unwrap_err();
    assert!(
        matches!(&e, Error::Guest(m) if m.contains(&format!("inode {ino}"))),
        "{e}"
    );
    // A volume cut short is opened with a warning; what lies past its end fails to read.
    let fs = Xfs::new(Arc::new(MemDisk(base[..48 << 20].to_vec()))).unwrap();
    assert!(
        fs.warnings().iter().any(|w| w.contains("shorter")),
        "{:?}",
        fs.warnings()
    );
    assert!(testutil::bounded_walk(&fs).is_ok());
}

mod fuzz;
mod kernel;
