//! Test support shared by the filesystem readers: walk a filesystem, compare it with the
//! host folder the image was built from, and hammer a reader with mutated images.

use super::{FileType, Filesystem, Ino, Meta};
use crate::blockdev::BlockRead;
use crate::Result;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// Every entry of a filesystem below its root: path (bytes, '/'-joined, no leading '/') →
/// metadata and content (files: bytes; symlinks: target; others: empty).
/// Path → (metadata, content), as [`walk`] returns it.
pub type Tree = BTreeMap<Vec<u8>, (Meta, Vec<u8>)>;

pub fn walk(fs: &dyn Filesystem) -> Result<Tree> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Vec<u8>, Ino, usize)> = vec![(Vec::new(), fs.root(), 0)];
    while let Some((path, ino, depth)) = stack.pop() {
        assert!(depth < 64, "directory tree deeper than 64: a loop?");
        for e in fs.read_dir(ino)? {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            let meta = fs.stat(e.ino)?;
            assert_eq!(meta.kind, e.kind, "{}: entry type vs inode type", show(&p));
            let content = match meta.kind {
                FileType::File => read_all(fs, e.ino, meta.size)?,
                FileType::Symlink => fs.read_link(e.ino)?,
                FileType::Dir => {
                    stack.push((p.clone(), e.ino, depth + 1));
                    Vec::new()
                }
                _ => Vec::new(),
            };
            out.insert(p, (meta, content));
        }
    }
    Ok(out)
}

pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// A whole file's content, read in odd-sized pieces to exercise offsets.
pub fn read_all(fs: &dyn Filesystem, ino: Ino, size: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size.min(64 << 20) as usize);
    let mut buf = vec![0u8; 100_003];
    loop {
        let n = fs.read(ino, out.len() as u64, &mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        assert!(out.len() as u64 <= size, "read past the file size");
    }
    assert_eq!(out.len() as u64, size, "file shorter than its size");
    Ok(out)
}

/// What to compare besides names, types and content.
#[derive(Clone, Copy)]
pub struct Compare {
    /// Permission bits (filesystems with Unix modes).
    pub mode: bool,
    /// uid and gid.
    pub owner: bool,
    /// mtime to this many nanoseconds (1 for ext4/XFS, 100 for NTFS, 2 s for FAT).
    pub mtime_ns: Option<u64>,
    /// Names compared case-insensitively (FAT short names), else exactly.
    pub fold_case: bool,
}

impl Compare {
    pub const UNIX: Compare = Compare {
        mode: true,
        owner: true,
        mtime_ns: Some(1),
        fold_case: false,
    };
}

/// Asserts that `fs` holds exactly the tree under `dir` (names, types, sizes, content,
/// symlink targets, and what `how` asks for). `ignore` lists top-level names the
/// filesystem adds itself (`lost+found`, `$RECYCLE.BIN`).
pub fn assert_same_tree(fs: &dyn Filesystem, dir: &Path, how: Compare, ignore: &[&str]) {
    let got = walk(fs).expect("walking the filesystem");
    let mut want: BTreeMap<Vec<u8>, std::fs::Metadata> = BTreeMap::new();
    host_walk(dir, Vec::new(), &mut want);
    let norm = |p: &[u8]| -> Vec<u8> {
        if how.fold_case {
            p.to_ascii_lowercase()
        } else {
            p.to_vec()
        }
    };
    let skip = |p: &[u8]| {
        ignore.iter().any(|i| {
            let i = i.as_bytes();
            p == i || (p.starts_with(i) && p.get(i.len()) == Some(&b'/'))
        })
    };
    let got: Tree = got
        .into_iter()
        .filter(|(p, _)| !skip(p))
        .map(|(p, v)| (norm(&p), v))
        .collect();
    let want: BTreeMap<Vec<u8>, std::fs::Metadata> =
        want.into_iter().map(|(p, v)| (norm(&p), v)).collect();
    let gk: Vec<String> = got.keys().map(|k| show(k)).collect();
    let wk: Vec<String> = want.keys().map(|k| show(k)).collect();
    assert_eq!(gk, wk, "the filesystem's names differ from the source tree");
    for (p, m) in &want {
        let (meta, content) = &got[p];
        let host = dir.join(std::ffi::OsStr::from_bytes(p));
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileType::Dir
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_file() {
            FileType::File
        } else {
            meta.kind
        };
        assert_eq!(meta.kind, kind, "{}: type", show(p));
        match kind {
            FileType::File => {
                let data = std::fs::read(&host).unwrap();
                assert_eq!(meta.size, data.len() as u64, "{}: size", show(p));
                assert!(content == &data, "{}: content differs", show(p));
            }
            FileType::Symlink => {
                let t = std::fs::read_link(&host).unwrap();
                assert_eq!(content, t.as_os_str().as_bytes(), "{}: target", show(p));
            }
            _ => {}
        }
        if how.mode && kind != FileType::Symlink {
            assert_eq!(meta.mode, m.mode() & 0o7777, "{}: mode", show(p));
        }
        if how.owner {
            assert_eq!(
                (meta.uid, meta.gid),
                (m.uid(), m.gid()),
                "{}: owner",
                show(p)
            );
        }
        if let (Some(res), false) = (how.mtime_ns, kind == FileType::Symlink) {
            let want_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
            let got_ns = meta.mtime.sec as i128 * 1_000_000_000 + meta.mtime.nsec as i128;
            assert!(
                (want_ns - got_ns).unsigned_abs() < res as u128,
                "{}: mtime {got_ns} vs {want_ns}",
                show(p)
            );
        }
    }
}

fn host_walk(dir: &Path, prefix: Vec<u8>, out: &mut BTreeMap<Vec<u8>, std::fs::Metadata>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mut p = prefix.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(e.file_name().as_bytes());
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            host_walk(&e.path(), p.clone(), out);
        }
        out.insert(p, m);
    }
}

/// Counts of a mutation run, for the closing note and BENCHMARKS.md.
#[derive(Debug, Default)]
pub struct FuzzStats {
    pub cases: usize,
    pub opened: usize,
    pub errors: usize,
}

/// An image with a few bytes changed, without copying it: the base is shared by every case.
struct Patched {
    base: Arc<Vec<u8>>,
    patch: BTreeMap<u64, u8>,
}

impl BlockRead for Patched {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        MemDiskRef(&self.base).read_at(offset, buf)?;
        for (&at, &v) in self.patch.range(offset..offset + buf.len() as u64) {
            buf[(at - offset) as usize] = v;
        }
        Ok(())
    }
}

struct MemDiskRef<'a>(&'a [u8]);

impl MemDiskRef<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !crate::blockdev::fits(offset, buf.len(), self.0.len() as u64) {
            return Err(crate::blockdev::past_end(
                "image",
                offset,
                buf.len(),
                self.0.len() as u64,
            ));
        }
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// How many mutation cases to run: `$CAIRN_FUZZ_CASES`, else `default`.
pub fn fuzz_cases(default: usize) -> usize {
    std::env::var("CAIRN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Opens and walks mutated versions of `image` with `open` (a bounded walk, then the
/// catalog's): every case must end in Ok or an error, within 20 s and without any single
/// allocation above 256 MiB. Mutations land mostly in `hot` (the metadata: superblocks,
/// tables, the first blocks), some anywhere.
/// Panics, hangs and huge allocations fail the test, naming the case and seed.
pub fn mutate<F>(
    image: Vec<u8>,
    hot: &[std::ops::Range<usize>],
    cases: usize,
    seed: u64,
    open: F,
) -> FuzzStats
where
    F: Fn(Arc<dyn BlockRead>) -> Result<Arc<dyn Filesystem>> + Send + Sync + 'static + Clone,
{
    let base = Arc::new(image);
    let len = base.len();
    assert!(len > 0);
    let mut stats = FuzzStats::default();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for case in 0..cases {
        let mut patch = BTreeMap::new();
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            let region = if !hot.is_empty() && next() % 8 != 0 {
                hot[(next() % hot.len() as u64) as usize].clone()
            } else {
                0..len
            };
            let span = region.end.saturating_sub(region.start).max(1);
            let at = (region.start + (next() as usize % span)).min(len - 1);
            let n = (1 + next() % 4) as usize;
            for i in at..(at + n).min(len) {
                let old = base[i];
                let v = match next() % 5 {
                    0 => 0,
                    1 => 0xff,
                    2 => old ^ (1 << (next() % 8)),
                    _ => next() as u8,
                };
                patch.insert(i as u64, v);
            }
        }
        let open = open.clone();
        let base = base.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::testalloc::reset();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let dev: Arc<dyn BlockRead> = Arc::new(Patched { base, patch });
                match open(dev) {
                    Ok(fs) => {
                        let _ = bounded_walk(fs.as_ref());
                        // The catalog's walk too: its tasks run on rayon's pool, so a
                        // loop or a panic there must end here as well.
                        let _ = crate::files::catalog::walk(fs.as_ref(), &mut Vec::new());
                        true
                    }
                    Err(_) => false,
                }
            }));
            let _ = tx.send((r.map_err(|_| ()), crate::testalloc::peak()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok((Ok(opened), peak)) => {
                assert!(
                    peak <= 256 << 20,
                    "case {case} (seed {seed:#x}): one allocation of {peak} bytes"
                );
                stats.opened += opened as usize;
                stats.errors += !opened as usize;
            }
            Ok((Err(()), _)) => panic!("case {case} (seed {seed:#x}): the reader panicked"),
            Err(_) => panic!("case {case} (seed {seed:#x}): the reader hung (20 s)"),
        }
        stats.cases += 1;
    }
    stats
}

/// Walks a (possibly damaged) filesystem with a budget: at most 20,000 entries, 64 levels,
/// the first 256 KiB of each file, every map and link. Errors are fine; only the walk's
/// termination matters.
pub fn bounded_walk(fs: &dyn Filesystem) -> Result<()> {
    let _ = fs.label();
    let _ = fs.warnings();
    let mut budget = 20_000usize;
    let mut stack = vec![(fs.root(), 0usize)];
    let mut buf = vec![0u8; 256 << 10];
    while let Some((ino, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(ino) else {
            continue;
        };
        for e in entries {
            if budget == 0 {
                return Ok(());
            }
            budget -= 1;
            let Ok(meta) = fs.stat(e.ino) else { continue };
            let _ = fs.map(e.ino);
            let _ = fs.streams(e.ino);
            match meta.kind {
                FileType::Dir if depth < 64 => stack.push((e.ino, depth + 1)),
                FileType::File => {
                    let _ = fs.read(e.ino, 0, &mut buf);
                    let _ = fs.read(e.ino, meta.size.saturating_sub(10), &mut buf[..100]);
                }
                FileType::Symlink => {
                    let _ = fs.read_link(e.ino);
                }
                _ => {}
            }
            let _ = fs.lookup(ino, &e.name);
        }
    }
    Ok(())
}

/// Reads a whole image file into memory (fixtures are a few MiB).
pub fn load(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    let o = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed for this test: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// True if `cmd` can be run; tests that need a missing tool say so loudly and fail in CI
/// (where `.ci/run` installs every tool), since a silently skipped test proves nothing.
pub fn have(cmd: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} || test -x /sbin/{cmd} || test -x /usr/sbin/{cmd}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("WARNING: {cmd} is not installed; this test cannot run without it");
        if std::env::var_os("CI").is_some() {
            panic!("{cmd} is missing in CI");
        }
    }
    found
}
