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

/// A loop mount of `img` at `dir`, unmounted on drop; None (with a warning) where the
/// kernel will not mount it.
struct Mount(PathBuf);

impl Mount {
    fn new(img: &Path, dir: &Path) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(img)
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "WARNING: cannot loop-mount XFS here ({}); the kernel-built XFS tests \
                     (btree-format files, holes, unwritten extents, hard links, dirty log) \
                     are skipped",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("WARNING: cannot run mount ({e}); kernel-built XFS tests skipped");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `blocks` blocks of `bs` bytes to two new files in turn with O_DIRECT, so the
/// allocator gives each block its own extent; the same content goes to `twin` (plain).
fn interleaved(mnt: &Path, twin: &Path, names: [&str; 2], blocks: usize, bs: usize) {
    use std::os::unix::fs::FileExt;
    let mut raw = vec![0u8; bs * 2];
    let pad = raw.as_ptr().align_offset(bs);
    let open = |p: PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    };
    let files = names.map(|n| open(mnt.join(n)));
    let mut twins: Vec<Vec<u8>> = vec![Vec::new(), Vec::new()];
    for i in 0..blocks {
        for (k, f) in files.iter().enumerate() {
            let data = pattern((i * 2 + k) as u64 + 1000, bs);
            raw[pad..pad + bs].copy_from_slice(&data);
            f.write_all_at(&raw[pad..pad + bs], (i * bs) as u64)
                .unwrap();
            twins[k].extend_from_slice(&data);
        }
    }
    for (k, n) in names.iter().enumerate() {
        std::fs::write(twin.join(n), &twins[k]).unwrap();
    }
}

/// Copies the atime and mtime of `from` to `to` (files written twice, on the host tree
/// and through the mount).
fn same_times(from: &Path, to: &Path) {
    run(Command::new("touch").arg("-h").arg("-r").arg(from).arg(to));
}

#[test]
fn kernel_built_image() {
    if !testutil::have("mkfs.xfs") || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, img, mnt) = (
        tmp.path().join("src"),
        tmp.path().join("img"),
        tmp.path().join("mnt"),
    );
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, &SMALL);
    // What only the kernel makes: hard links, a sticky directory, a socket, holes.
    std::fs::hard_link(src.join("odd.bin"), src.join("a/odd_link")).unwrap();
    std::fs::create_dir(src.join("tmp")).unwrap();
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let holey = std::fs::File::create(src.join("holey")).unwrap();
    for i in 0..8u64 {
        use std::os::unix::fs::FileExt;
        holey
            .write_all_at(&pattern(i + 50, 65536), i << 20)
            .unwrap();
    }
    holey.set_len(9 << 20).unwrap();
    drop(holey);
    // 1 KiB blocks: 1500 extents need a bmap btree of two levels.
    mkfs(&img, &["-b", "size=1024"], None);
    {
        let Some(_m) = Mount::new(&img, &mnt) else {
            return;
        };
        run(Command::new("cp")
            .arg("-a")
            .arg("--sparse=always")
            .arg(format!("{}/.", src.display()))
            .arg(&mnt));
        interleaved(&mnt, &src, ["frag_a", "frag_b"], 1500, 1024);
        // Unwritten extents: 1 MiB preallocated, 4 KiB of it written.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(mnt.join("prealloc"))
            .unwrap();
        // SAFETY: a valid descriptor.
        assert_eq!(
            unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 1 << 20) },
            0
        );
        std::os::unix::fs::FileExt::write_all_at(&f, &pattern(99, 4096), 512 << 10).unwrap();
        drop(f);
        let mut twin = vec![0u8; 1 << 20];
        twin[512 << 10..(512 << 10) + 4096].copy_from_slice(&pattern(99, 4096));
        std::fs::write(src.join("prealloc"), twin).unwrap();
        // A reflinked copy shares the big file's extents.
        run(Command::new("cp")
            .arg("--reflink=always")
            .arg(mnt.join("big.bin"))
            .arg(mnt.join("big_clone")));
        std::fs::copy(src.join("big.bin"), src.join("big_clone")).unwrap();
        for n in ["frag_a", "frag_b", "prealloc", "big_clone"] {
            same_times(&src.join(n), &mnt.join(n));
        }
    }
    let fs = open_img(&img);
    assert_eq!(fs.warnings(), Vec::<String>::new(), "cleanly unmounted");
    testutil::assert_same_tree(&fs, &src, Compare::UNIX, &[]);
    let root = fs.root();
    let (a, b) = (
        child(&fs, root, "odd.bin"),
        child(&fs, child(&fs, root, "a").ino, "odd_link"),
    );
    assert_eq!(a.ino, b.ino, "hard link");
    assert_eq!(fs.stat(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.stat(child(&fs, root, "tmp").ino).unwrap().mode, 0o1777);
    assert_eq!(child(&fs, root, "sock").kind, FileType::Socket);
    for n in ["frag_a", "frag_b"] {
        let ino = child(&fs, root, n).ino;
        let inode = fs.inode(ino).unwrap();
        assert_eq!(inode.format, FMT_BTREE, "{n}");
        assert!(
            u16::from_be_bytes([inode.fork[0], inode.fork[1]]) >= 2,
            "{n}: root level"
        );
        assert!(fs.map(ino).unwrap().len() >= 1500);
    }
    let holey = child(&fs, root, "holey").ino;
    let want: Vec<_> = (0..8u64).map(|i| i << 20..(i << 20) + 65536).collect();
    assert_eq!(crate::fs::data_ranges(&fs, holey, 9 << 20).unwrap(), want);
    let pre = fs.map(child(&fs, root, "prealloc").ino).unwrap();
    let written: Vec<_> = pre
        .iter()
        .filter(|m| m.data)
        .map(|m| (m.file_offset, m.len))
        .collect();
    assert_eq!(written, vec![(512 << 10, 4096)]);
    assert!(
        pre.iter().any(|m| !m.data && m.disk_offset.is_some()),
        "unwritten extents"
    );
    let (big, clone) = (
        child(&fs, root, "big.bin").ino,
        child(&fs, root, "big_clone").ino,
    );
    assert_eq!(
        fs.map(big).unwrap(),
        fs.map(clone).unwrap(),
        "reflinked extents"
    );
    check_lookups(&fs);
    check_used_blocks(&fs, &img);
    drop(fs);

    // Crash: commit a transaction to the log, then shut down without an unmount record.
    {
        let Some(_m) = Mount::new(&img, &mnt) else {
            return;
        };
        std::fs::write(mnt.join("after_crash"), b"late").unwrap();
        run(Command::new("sync").arg("-f").arg(mnt.join("after_crash")));
        run(Command::new(tool("xfs_io"))
            .args(["-x", "-c", "shutdown"])
            .arg(&mnt));
    }
    let fs = open_img(&img);
    assert_eq!(fs.warnings(), vec![DIRTY_LOG_WARNING.to_string()]);
    testutil::bounded_walk(&fs).unwrap();
}

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
    eprintln!("fuzz_xfs: {stats:?} over {} hot ranges", hot.len());
    assert_eq!(stats.cases, cases);
}
