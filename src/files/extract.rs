//! `dump` (one file's bytes, or a directory as a tar stream) and `restore --path` (files
//! and trees written under a target folder), reading only the chunks that hold them.
//!
//! Names inside a guest filesystem are the guest's: a name with `/`, NUL, `.` or `..`
//! (possible in damaged or hostile metadata) would write outside the target, so such
//! entries are skipped with a warning. Symlinks are restored as links and never followed.
//! Files come back sparse (only their data ranges are written), with mode, mtime and (as
//! root) ownership; hard links inside one restore stay hard links.

use super::{Browser, Target};
use crate::fs::{data_ranges, FileType, Filesystem, Ino, Meta};
use crate::restore::Existing;
use crate::snapshot::Name;
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Bytes read from a filesystem per call while copying a file.
const BUF: usize = 4 << 20;

/// Writes one file's content to `out`, streaming.
pub fn dump_file(fs: &dyn Filesystem, ino: Ino, size: u64, out: &mut dyn Write) -> Result<u64> {
    let mut buf = vec![0u8; BUF.min(size.max(1) as usize)];
    let mut off = 0u64;
    while off < size {
        let n = fs.read(ino, off, &mut buf)?;
        if n == 0 {
            return Err(Error::Guest(format!(
                "inode {ino}: content ends at {off} of {size} bytes"
            )));
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("writing the file's content", e))?;
        off += n as u64;
    }
    Ok(off)
}

/// `dump`: a file's bytes, or with `tar` a file or directory tree as a tar stream.
pub fn dump(b: &Browser, path: &[u8], tar: bool, out: &mut dyn Write) -> Result<u64> {
    let Target::Node { vol, ino, meta, .. } = b.resolve(path)? else {
        return Err(Error::Usage(format!(
            "{} is a disk or volume; give a path inside a volume (see `cairn ls`), or restore \
             the disk itself with `cairn restore --disk`",
            String::from_utf8_lossy(path)
        )));
    };
    let fs = b.fs(vol)?;
    if !tar {
        if meta.kind != FileType::File {
            return Err(Error::Usage(format!(
                "{} is not a regular file; use --archive tar for a directory",
                String::from_utf8_lossy(path)
            )));
        }
        return dump_file(fs.as_ref(), ino, meta.size, out);
    }
    let top = path
        .rsplit(|&c| c == b'/')
        .find(|c| !c.is_empty())
        .unwrap_or(b"root")
        .to_vec();
    let mut t = tar::Builder::new(out);
    t.mode(tar::HeaderMode::Complete);
    let mut n = 0;
    tar_node(fs.as_ref(), ino, &meta, &top, &mut t, &mut n, 0)?;
    t.finish()
        .map_err(|e| Error::io("writing the tar stream", e))?;
    Ok(n)
}

/// The guest's file content as `Read`, for tar.
struct Reader<'a> {
    fs: &'a dyn Filesystem,
    ino: Ino,
    off: u64,
    size: u64,
}

impl std::io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.off >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - self.off) as usize);
        let n = self
            .fs
            .read(self.ino, self.off, &mut buf[..want])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if n == 0 {
            return Err(std::io::Error::other("the file's content ends early"));
        }
        self.off += n as u64;
        Ok(n)
    }
}

fn tar_header(meta: &Meta, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid as u64);
    h.set_gid(meta.gid as u64);
    h.set_mtime(meta.mtime.sec.max(0) as u64);
    h.set_size(if kind == tar::EntryType::Regular {
        meta.size
    } else {
        0
    });
    h
}

fn tar_node<W: Write>(
    fs: &dyn Filesystem,
    ino: Ino,
    meta: &Meta,
    path: &[u8],
    t: &mut tar::Builder<W>,
    n: &mut u64,
    depth: usize,
) -> Result<()> {
    let io = |e| Error::io("writing the tar stream", e);
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    match meta.kind {
        FileType::File => {
            let mut h = tar_header(meta, tar::EntryType::Regular);
            t.append_data(
                &mut h,
                p,
                Reader {
                    fs,
                    ino,
                    off: 0,
                    size: meta.size,
                },
            )
            .map_err(io)?;
            *n += meta.size;
        }
        FileType::Symlink => {
            let target = fs.read_link(ino)?;
            let mut h = tar_header(meta, tar::EntryType::Symlink);
            t.append_link(&mut h, p, Path::new(std::ffi::OsStr::from_bytes(&target)))
                .map_err(io)?;
        }
        FileType::Dir => {
            let mut h = tar_header(meta, tar::EntryType::Directory);
            t.append_data(&mut h, p, std::io::empty()).map_err(io)?;
            if depth > 256 {
                return Ok(());
            }
            let mut entries = fs.read_dir(ino)?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for e in entries {
                if Name::new(e.name.clone()).problem().is_some() {
                    warn_name(path, &e.name);
                    continue;
                }
                let m = fs.stat(e.ino)?;
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&e.name);
                tar_node(fs, e.ino, &m, &child, t, n, depth + 1)?;
            }
        }
        _ => {} // device nodes, fifos, sockets: not in a tar of files
    }
    Ok(())
}

fn warn_name(dir: &[u8], name: &[u8]) {
    eprintln!(
        "cairn: warning: skipped an entry of {} named {:?}: not a safe file name",
        String::from_utf8_lossy(dir),
        String::from_utf8_lossy(name)
    );
}

/// What `restore --path` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PathsReport {
    pub snapshot: String,
    pub restored: Vec<RestoredPath>,
    #[serde(serialize_with = "crate::report::paths")]
    pub kept: Vec<PathBuf>,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Bytes fetched from the repository for it.
    pub bytes_fetched: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoredPath {
    pub path: String,
    #[serde(serialize_with = "crate::report::path")]
    pub target: PathBuf,
}

/// Restores each of `paths` as `target/<its last component>`.
pub fn restore_paths(
    b: &Browser,
    paths: &[Vec<u8>],
    target: &Path,
    existing: Existing,
) -> Result<PathsReport> {
    let mut rep = PathsReport {
        snapshot: b.id.to_hex(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for p in paths {
        let t = b.resolve(p)?;
        let Target::Node { vol, ino, meta, .. } = t else {
            return Err(Error::Usage(format!(
                "{} is a disk or a group of volumes; give a volume (`/DISK/p1`) or a path \
                 inside one",
                String::from_utf8_lossy(p)
            )));
        };
        let last = p
            .rsplit(|&c| c == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"")
            .to_vec();
        if Name::new(last.clone()).problem().is_some() {
            return Err(Error::Usage(format!(
                "{}: its last component is not a usable file name",
                String::from_utf8_lossy(p)
            )));
        }
        let dest = target.join(std::ffi::OsStr::from_bytes(&last));
        todo.push((p.clone(), vol, ino, meta, dest));
    }
    // --existing is decided for every path before anything is written.
    let interactive = crate::restore::interactive();
    let mut mode = existing;
    let mut go = Vec::new();
    for (p, vol, ino, meta, dest) in todo {
        let exists = std::fs::symlink_metadata(&dest).is_ok();
        let keep = match (exists, mode) {
            (false, _) | (true, Existing::Overwrite) => false,
            (true, Existing::Keep) => true,
            (true, Existing::Abort) => return Err(crate::restore::exists_error(&dest, "")),
            (true, Existing::Prompt) if !interactive => {
                return Err(crate::restore::exists_error(
                    &dest,
                    " (no terminal to ask on)",
                ))
            }
            (true, Existing::Prompt) => match crate::restore::ask(&dest)? {
                crate::restore::Answer::Yes => false,
                crate::restore::Answer::No => true,
                crate::restore::Answer::All => {
                    mode = Existing::Overwrite;
                    false
                }
                crate::restore::Answer::Quit => {
                    return Err(Error::Usage(
                        "restore cancelled; nothing was written".into(),
                    ))
                }
            },
        };
        if keep {
            rep.kept.push(dest);
        } else {
            go.push((p, vol, ino, meta, dest));
        }
    }
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let root = unsafe { libc::geteuid() } == 0;
    for (p, vol, ino, meta, dest) in go {
        let fs = b.fs(vol)?;
        let mut w = Writer {
            fs: fs.as_ref(),
            root,
            links: HashMap::new(),
            rep: &mut rep,
        };
        w.node(ino, &meta, &dest, 0)?;
        rep.restored.push(RestoredPath {
            path: String::from_utf8_lossy(&p).into_owned(),
            target: dest,
        });
    }
    Ok(rep)
}

struct Writer<'a> {
    fs: &'a dyn Filesystem,
    root: bool,
    /// Files with several links restored so far: inode → where.
    links: HashMap<Ino, PathBuf>,
    rep: &'a mut PathsReport,
}

impl Writer<'_> {
    fn node(&mut self, ino: Ino, meta: &Meta, dest: &Path, depth: usize) -> Result<()> {
        let io = |what: &str, e| Error::io(format!("{what} {}", dest.display()), e);
        match meta.kind {
            FileType::Dir => {
                match std::fs::create_dir(dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                    Err(e) => return Err(io("creating", e)),
                }
                self.rep.dirs += 1;
                if depth <= 256 {
                    let mut entries = self.fs.read_dir(ino)?;
                    entries.sort_by(|a, b| a.name.cmp(&b.name));
                    for e in entries {
                        if Name::new(e.name.clone()).problem().is_some() {
                            warn_name(dest.as_os_str().as_bytes(), &e.name);
                            continue;
                        }
                        let m = self.fs.stat(e.ino)?;
                        let child = dest.join(std::ffi::OsStr::from_bytes(&e.name));
                        self.node(e.ino, &m, &child, depth + 1)?;
                    }
                }
            }
            FileType::File => {
                if meta.nlink > 1 {
                    if let Some(first) = self.links.get(&ino) {
                        let _ = std::fs::remove_file(dest);
                        std::fs::hard_link(first, dest).map_err(|e| io("linking", e))?;
                        self.rep.links += 1;
                        return Ok(());
                    }
                    self.links.insert(ino, dest.to_path_buf());
                }
                self.file(ino, meta, dest)?;
                self.rep.files += 1;
            }
            FileType::Symlink => {
                let target = self.fs.read_link(ino)?;
                let _ = std::fs::remove_file(dest);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), dest)
                    .map_err(|e| io("creating symlink", e))?;
                self.rep.links += 1;
            }
            other => {
                if !self.special(other, meta, dest) {
                    self.rep.warnings.push(format!(
                        "{}: a {} was not recreated (that needs root)",
                        dest.display(),
                        super::list::Row::kind_of(other)
                    ));
                    return Ok(());
                }
            }
        }
        self.attributes(meta, dest)
    }

    /// Writes a file sparsely: a temporary file next to it, only the data ranges, then
    /// renamed over the target.
    fn file(&mut self, ino: Ino, meta: &Meta, dest: &Path) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let tmp = dest.with_file_name(format!(
            ".cairn-partial-{}",
            hex::encode(crate::crypto::random_bytes::<6>())
        ));
        let res = (|| {
            let f = std::fs::File::create(&tmp)
                .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
            let mut buf = vec![0u8; BUF];
            for r in data_ranges(self.fs, ino, meta.size)? {
                let mut off = r.start;
                while off < r.end {
                    let want = ((r.end - off) as usize).min(BUF);
                    let n = self.fs.read(ino, off, &mut buf[..want])?;
                    if n == 0 {
                        return Err(Error::Guest(format!(
                            "{}: content ends at {off} of {} bytes",
                            dest.display(),
                            meta.size
                        )));
                    }
                    // A block of zeros inside a data range is left a hole too.
                    if !crate::chunker::is_zero(&buf[..n]) {
                        f.write_all_at(&buf[..n], off)
                            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
                    }
                    off += n as u64;
                    self.rep.bytes += n as u64;
                }
            }
            f.set_len(meta.size)
                .map_err(|e| Error::io(format!("sizing {}", tmp.display()), e))?;
            f.sync_all()
                .map_err(|e| Error::io(format!("flushing {}", tmp.display()), e))?;
            std::fs::rename(&tmp, dest)
                .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// Device nodes, fifos and sockets: recreated with mknod where allowed.
    fn special(&mut self, kind: FileType, meta: &Meta, dest: &Path) -> bool {
        let fmt = match kind {
            FileType::Fifo => libc::S_IFIFO,
            FileType::CharDev if self.root => libc::S_IFCHR,
            FileType::BlockDev if self.root => libc::S_IFBLK,
            FileType::Socket => libc::S_IFSOCK,
            _ => return false,
        };
        let (ma, mi) = meta.rdev.unwrap_or((0, 0));
        let Ok(c) = std::ffi::CString::new(dest.as_os_str().as_bytes()) else {
            return false;
        };
        let _ = std::fs::remove_file(dest);
        let dev = libc::makedev(ma, mi);
        unsafe { libc::mknod(c.as_ptr(), fmt | (meta.mode & 0o7777), dev) == 0 }
    }

    /// Mode, ownership (as root) and times, never following a symlink.
    fn attributes(&mut self, meta: &Meta, dest: &Path) -> Result<()> {
        let Ok(c) = std::ffi::CString::new(dest.as_os_str().as_bytes()) else {
            return Ok(());
        };
        let link = meta.kind == FileType::Symlink;
        unsafe {
            if self.root {
                libc::lchown(c.as_ptr(), meta.uid, meta.gid);
            }
            if !link {
                libc::chmod(c.as_ptr(), meta.mode & 0o7777);
            }
            let ts = |t: crate::fs::Time| libc::timespec {
                tv_sec: t.sec as libc::time_t,
                tv_nsec: t.nsec.min(999_999_999) as libc::c_long,
            };
            let times = [ts(meta.atime), ts(meta.mtime)];
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
        Ok(())
    }
}
