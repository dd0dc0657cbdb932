//! Test images: a host folder copied into a fresh `mkntfs` image through an ntfs-3g FUSE
//! mount, then the things only NTFS has (fragmentation, holes, alternate streams, short
//! names, reparse points, compression) made on the mount and mirrored into the folder
//! where they have a Unix meaning.

use crate::fs::testutil::sh;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An ntfs-3g mount, unmounted (and its process waited for, so every byte is on the image)
/// when dropped, also when a test fails.
pub struct Mount {
    pub dir: PathBuf,
    child: Option<Child>,
}

fn mounted(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&d)))
}

impl Mount {
    pub fn new(img: &Path, dir: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let child = Command::new("ntfs-3g")
            .arg("-o")
            .arg(format!("no_detach,{opts}"))
            .arg(img)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ntfs-3g is needed for this test");
        let mut m = Mount {
            dir,
            child: Some(child),
        };
        for _ in 0..400 {
            if mounted(&m.dir) {
                return m;
            }
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                panic!("ntfs-3g exited with {st} before mounting");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("ntfs-3g did not mount {} within 10 s", m.dir.display());
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount")
                .arg("-u")
                .arg("-z")
                .arg(&self.dir)
                .status();
        }
        for _ in 0..400 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Deterministic bytes that do not compress.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write(p: &Path, b: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, b).unwrap();
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// A reparse buffer: symlink (with flags) or mount point, substitute and print names.
pub fn reparse_hex(tag: u32, sub: &str, print: &str, flags: Option<u32>) -> String {
    let (s, p) = (utf16(sub), utf16(print));
    let mut body = Vec::new();
    for v in [0, s.len(), s.len() + 2, p.len()] {
        body.extend((v as u16).to_le_bytes());
    }
    if let Some(f) = flags {
        body.extend(f.to_le_bytes());
    }
    body.extend(&s);
    body.extend([0, 0]);
    body.extend(&p);
    body.extend([0, 0]);
    let mut v = Vec::new();
    v.extend(tag.to_le_bytes());
    v.extend((body.len() as u16).to_le_bytes());
    v.extend([0, 0]);
    v.extend(body);
    format!("0x{}", hex::encode(v))
}

pub fn setfattr(name: &str, value: &str, path: &Path) {
    sh(
        "setfattr",
        &["-n", name, "-v", value, path.to_str().unwrap()],
    );
}

/// Copies every mtime (but symlinks') of the tree under `src` onto the same paths under
/// `dst`, after the mount-side changes have touched them.
pub fn copy_mtimes(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_symlink() {
            continue;
        }
        let target = dst.join(e.file_name());
        if m.is_dir() {
            copy_mtimes(&e.path(), &target);
        }
        let f = std::fs::File::open(&target).unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
    }
}

/// Builds a `size`-byte image with `mkntfs -F -Q` and the arguments `mkfs`: runs `first` on the fresh mount (ntfs-3g
/// with alternate streams as xattrs and compression enabled), copies `src` in, adds the
/// files `first` made to `src`, then runs `extra`.
pub fn build(
    img: &Path,
    mnt: &Path,
    src: &Path,
    size: u64,
    mkfs: &[&str],
    first: impl FnOnce(&Mount) -> Vec<(String, Vec<u8>)>,
    extra: impl FnOnce(&Mount),
) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let mut args = vec!["-F", "-Q", "-q"];
    args.extend_from_slice(mkfs);
    args.push(img.to_str().unwrap());
    sh("mkntfs", &args);
    let m = Mount::new(img, mnt, "streams_interface=xattr,compression");
    let made = first(&m);
    sh(
        "cp",
        &[
            "-a",
            &format!("{}/.", src.display()),
            m.dir.to_str().unwrap(),
        ],
    );
    for (name, content) in made {
        std::fs::write(src.join(name), content).unwrap();
    }
    extra(&m);
    copy_mtimes(src, &m.dir);
}

/// A fragmented file: the free space is filled with 64 KiB files, every other one is
/// deleted, `name` (`size` bytes, more than the volume has in one piece) is written over
/// the holes, then the other fillers go so what is copied next fragments too. Returns the
/// file for the source (added after the copy, which would rewrite it contiguously).
pub fn fragment(m: &Mount, name: &str, size: usize) -> Vec<(String, Vec<u8>)> {
    use std::io::Write;
    let fill = m.path(".fill");
    std::fs::create_dir(&fill).unwrap();
    let piece = data(4242, 64 << 10);
    let mut n = 0;
    while n < 4000 {
        let ok = std::fs::File::create(fill.join(n.to_string()))
            .and_then(|mut f| piece.chunks(8192).try_for_each(|c| f.write_all(c)));
        n += 1;
        if ok.is_err() {
            break;
        }
    }
    for i in (0..n).step_by(2) {
        std::fs::remove_file(fill.join(i.to_string())).unwrap();
    }
    let content = data(1000, size);
    // Small writes: each allocates where the next hole is.
    let mut f = std::fs::File::create(m.path(name)).unwrap();
    for c in content.chunks(8192) {
        f.write_all(c).unwrap();
    }
    drop(f);
    std::fs::remove_dir_all(&fill).unwrap();
    vec![(name.to_string(), content)]
}

/// A sparse file: `size` bytes with data only at `at`; made the same in both places.
pub fn sparse(m: &Mount, src: &Path, name: &str, size: u64, at: &[u64]) {
    for p in [m.path(name), src.join(name)] {
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for (i, &o) in at.iter().enumerate() {
            f.write_all_at(&data(77 + i as u64, 5000), o).unwrap();
        }
    }
}

/// A Windows symlink (relative, to `target`) made on the mount, a Unix one in the source.
pub fn win_symlink(m: &Mount, src: &Path, name: &str, target: &str) {
    std::fs::write(m.path(name), b"").unwrap();
    let hex = reparse_hex(0xA000_000C, target, target, Some(1));
    setfattr("system.ntfs_reparse_data", &hex, &m.path(name));
    symlink(target, src.join(name)).unwrap();
}

/// A junction (mount point) on a new directory, shown as a symlink to its print name.
pub fn junction(m: &Mount, src: &Path, name: &str, print: &str) {
    std::fs::create_dir(m.path(name)).unwrap();
    let hex = reparse_hex(0xA000_0003, &format!("\\??\\{print}"), print, None);
    setfattr("system.ntfs_reparse_data", &hex, &m.path(name));
    symlink(print, src.join(name)).unwrap();
}
