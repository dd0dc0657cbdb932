//! Source trees and images for the tests: a host folder with every kind of entry the
//! reader must handle, turned into images by the real `mkfs.ext2/3/4 -d`.

use crate::blockdev::FileDisk;
use crate::fs::ext4::{open_ext4, Ext4};
use crate::fs::testutil::sh;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SPARSE_SIZE: u64 = 100 << 20;
/// (offset, length, byte) of the data written into the sparse file.
pub const SPARSE_PIECES: &[(u64, usize, u8)] = &[
    (0, 5000, b'A'),
    (1 << 20, 4096, b'B'),
    ((3 << 20) + 123, 10, b'C'),
    (5 << 20, 3000, b'D'),
    (6 << 20, 3000, b'E'),
    (7 << 20, 3000, b'F'),
    (8 << 20, 3000, b'G'),
    (70 << 20, 8192, b'H'),
    (SPARSE_SIZE - 100, 100, b'I'),
];
pub const LONG_TARGET: &str =
    "a/rather/long/symlink/target/that/does/not/fit/in/the/inode/itself/at/all.txt";
pub const BIG_DIR_ENTRIES: usize = 3000;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Fills `root` with the test tree. `big` adds the 3000-entry directory and the 20 MiB
/// file (left out where every file costs a 64 KiB block). `dir_entries` sets the size of
/// the many-entry directory.
pub fn build_tree(root: &Path, big: bool, dir_entries: usize) {
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    for d in ["d1/d2/d3", "empty_dir", "sticky", "many"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    w("d1/d2/d3/deep.txt", b"deep down\n");
    w("d1/one.txt", b"one\n");
    w("small.txt", b"hello, ext4\n");
    w("empty", b"");
    // Sizes around the inline-data boundaries (60 bytes of i_block, then system.data).
    for n in [1usize, 59, 60, 61, 100, 150, 4095, 4096, 4097] {
        let data: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        w(&format!("sized_{n}"), &data);
    }
    // A file of 300 KiB: past the single-indirect range at 1 KiB blocks.
    w("medium.bin", &pattern(300 << 10, 7));
    for i in 0..dir_entries {
        // Some names with high bytes, where signed and unsigned index hashes differ.
        let name = if i % 150 == 7 {
            [&b"many/\xe9t\xe9"[..], format!("{i:05}").as_bytes()].concat()
        } else {
            format!("many/f{i:05}").into_bytes()
        };
        let p = root.join(std::ffi::OsStr::from_bytes(&name));
        std::fs::write(p, format!("entry {i}\n")).unwrap();
    }
    // Names of 200 bytes: at 1 KiB blocks, few fit a leaf, so the index gets two levels.
    std::fs::create_dir(root.join("longnames")).unwrap();
    for i in 0..dir_entries / 5 {
        w(&format!("longnames/{i:05}{}", "x".repeat(195)), b"");
    }
    if big {
        w("big.bin", &pattern(20 << 20, 1));
    }
    {
        let f = std::fs::File::create(root.join("sparse.bin")).unwrap();
        f.set_len(SPARSE_SIZE).unwrap();
        use std::os::unix::fs::FileExt;
        for &(at, n, v) in SPARSE_PIECES {
            f.write_all_at(&vec![v; n], at).unwrap();
        }
    }
    // All hole: debugfs fallocate turns it into unwritten extents in one test.
    std::fs::File::create(root.join("prealloc"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link_short")).unwrap();
    std::os::unix::fs::symlink(LONG_TARGET, root.join("link_long")).unwrap();
    std::fs::hard_link(root.join("small.txt"), root.join("hard")).unwrap();
    w("suid", b"#!/bin/sh\n");
    w("private", b"secret\n");
    w("owned", b"owned\n");
    w("high_owner", b"high\n");
    let bad = root.join(std::ffi::OsStr::from_bytes(b"bad\xffname\xfe"));
    std::fs::write(&bad, b"non-utf8 name\n").unwrap();
    // SAFETY: valid NUL-terminated paths.
    unsafe {
        assert_eq!(libc::mkfifo(cpath(&root.join("fifo")).as_ptr(), 0o644), 0);
    }
    let _sock = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    if is_root() {
        // SAFETY: valid NUL-terminated path.
        let r = unsafe {
            libc::mknod(
                cpath(&root.join("chardev")).as_ptr(),
                libc::S_IFCHR | 0o644,
                libc::makedev(1, 3),
            )
        };
        assert_eq!(r, 0);
        chown(&root.join("owned"), 1234, 5678);
        chown(&root.join("high_owner"), 100_000, 200_000);
    }
    chmod(&root.join("suid"), 0o4755);
    chmod(&root.join("private"), 0o600);
    chmod(&root.join("sticky"), 0o1777);
    set_times(root);
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// mkfs -d keeps whole seconds only, so the source gets whole-second times (children
/// first, so setting a directory's time is the last change to it).
fn set_times(dir: &Path) {
    let mut n = 0i64;
    fn rec(p: &Path, n: &mut i64) {
        let m = std::fs::symlink_metadata(p).unwrap();
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for c in names {
                rec(&c, n);
            }
        }
        *n += 1;
        let t = libc::timespec {
            tv_sec: 1_600_000_000 + *n * 37,
            tv_nsec: 0,
        };
        let times = [t, t];
        // SAFETY: valid path and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(p).as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat {}", p.display());
    }
    rec(dir, &mut n);
}

/// Deterministic bytes that do not repeat within a block.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Builds an image of `mib` MiB (sparse) from `src` with `tool -d`, then, if `index`,
/// has e2fsck index the large directories (mkfs -d writes them linear).
pub fn mkfs(src: &Path, out: &Path, tool: &str, opts: &[&str], mib: u64, index: bool) -> PathBuf {
    let img = out.join(format!(
        "{tool}-{}.img",
        opts.join("").replace(['/', ' '], "_")
    ));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let mut args = vec!["-q", "-F", "-d", src.to_str().unwrap()];
    args.extend_from_slice(opts);
    args.push(img.to_str().unwrap());
    sh(tool, &args);
    if index {
        e2fsck(&img, &["-fyD"]);
    }
    img
}

/// Runs e2fsck, which exits 1 when it changed something (as -D does).
pub fn e2fsck(img: &Path, opts: &[&str]) {
    let o = std::process::Command::new("e2fsck")
        .args(opts)
        .arg(img)
        .output()
        .expect("e2fsck is needed for this test");
    let code = o.status.code().unwrap_or(99);
    assert!(
        code <= 1,
        "e2fsck {opts:?}: {code}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs one debugfs request that writes to the image.
pub fn debugfs_w(img: &Path, req: &str) {
    sh("debugfs", &["-w", "-R", req, img.to_str().unwrap()]);
}

pub fn open_img(img: &Path) -> Ext4 {
    let dev = Arc::new(FileDisk::open(img).unwrap());
    open_ext4(dev).unwrap()
}

/// A superblock field from `dumpe2fs -h`.
pub fn dumpe2fs_field(img: &Path, field: &str) -> String {
    let o = std::process::Command::new("dumpe2fs")
        .args(["-h", img.to_str().unwrap()])
        .output()
        .expect("dumpe2fs is needed for this test");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
        .unwrap_or_else(|| panic!("dumpe2fs has no {field}: {text}"))
}

/// True if every tool the tests use is here (else the tests warn and pass, or fail in CI).
pub fn tools() -> bool {
    [
        "mkfs.ext4",
        "mkfs.ext3",
        "mkfs.ext2",
        "debugfs",
        "e2fsck",
        "dumpe2fs",
    ]
    .iter()
    .all(|t| crate::fs::testutil::have(t))
}
