//! The local filesystem (or a NAS mount) as a backend.
//!
//! Writes go to a temporary file in the target folder, are fsynced, renamed into place, and
//! the folder is fsynced, so after a crash an object is either absent or complete. New
//! names that must not exist yet (locks) are claimed with link(2), atomic on NFS, or with
//! `O_EXCL` creation on shares without hard links (SMB without Unix extensions); nothing
//! here uses flock or atime.

use super::Backend;
use crate::crypto::random_bytes;
use crate::error::{Error, IoContext, Result};
use crate::repo::files::Listed;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `data` to a fresh temporary file next to `target`, fsynced, and returns its path.
    fn write_temp(&self, target: &Path, data: &[u8]) -> Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).ctx(|| format!("creating folder {}", dir.display()))?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(random_bytes::<8>())));
        let res = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("writing {}", target.display()), e));
        }
        Ok(tmp)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing folder {}", dir.display()))
}

/// A pack being written straight to a temporary file in its folder (`data/.tmp-…`), so
/// memory holds none of it; renamed to its name (in its fan-out folder) when complete.
struct StagedFile {
    root: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
}

impl Write for StagedFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open until commit").write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
    }
}

impl super::Staged for StagedFile {
    fn commit(mut self: Box<Self>, name: &str) -> Result<()> {
        let target = self.root.join(name);
        let file = self.file.take().expect("committed once");
        let synced = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        synced.ctx(|| format!("writing {}", target.display()))?;
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).ctx(|| format!("creating folder {}", dir.display()))?;
        fs::rename(&self.tmp, &target).ctx(|| format!("renaming into {}", target.display()))?;
        sync_dir(dir)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // Not committed, or the rename failed: the temporary file goes (after a rename
        // there is nothing left at its name).
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Backend for LocalBackend {
    fn stage_file(&self, dir: &str) -> Result<Option<Box<dyn super::Staged>>> {
        let dir = self.path(dir);
        fs::create_dir_all(&dir).ctx(|| format!("creating folder {}", dir.display()))?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(random_bytes::<8>())));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        Ok(Some(Box::new(StagedFile {
            root: self.root.clone(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(256 << 10, f)),
        })))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.path(name);
        fs::read(&p).ctx(|| format!("reading {}", p.display()))
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(name);
        let f = File::open(&p).ctx(|| format!("opening {}", p.display()))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Error::corrupt(
                    p.display().to_string(),
                    format!("file is truncated: {len} bytes at offset {offset} are past its end"),
                )
            } else {
                Error::io(format!("reading {}", p.display()), e)
            }
        })?;
        Ok(buf)
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let target = self.path(name);
        let tmp = self.write_temp(&target, data)?;
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("renaming into {}", target.display()), e));
        }
        sync_dir(target.parent().unwrap_or(&self.root))
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool> {
        let target = self.path(name);
        let tmp = self.write_temp(&target, data)?;
        // link(2) fails with EEXIST if the name is taken, atomically, also on NFS.
        let res = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                sync_dir(target.parent().unwrap_or(&self.root))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            // No hard links on this share: O_EXCL creation, which SMB and NFSv3+ honour.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
                ) =>
            {
                let mut f = match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
                    Err(e) => return Err(Error::io(format!("creating {}", target.display()), e)),
                };
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .ctx(|| format!("writing {}", target.display()))?;
                sync_dir(target.parent().unwrap_or(&self.root))?;
                Ok(true)
            }
            Err(e) => Err(Error::io(format!("creating {}", target.display()), e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let base = self.path(dir);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&base) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("listing {}", base.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("listing {}", base.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Other processes remove locks (and prune removes packs) while we list: an entry
            // gone between the directory read and its stat was simply removed first.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", base.display()), e)),
            };
            if meta.is_dir() && name.len() == 2 {
                for sub in self.list(&format!("{dir}/{name}"))? {
                    out.push(sub);
                }
            } else if meta.is_file() {
                let size = meta.len();
                out.push(Listed {
                    name: format!("{dir}/{name}"),
                    size,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        let p = self.path(name);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("inspecting {}", p.display()), e)),
        }
    }

    fn modified(&self, name: &str) -> Result<Option<std::time::SystemTime>> {
        let p = self.path(name);
        match fs::metadata(&p).and_then(|m| m.modified()) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("inspecting {}", p.display()), e)),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        let p = self.path(name);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(p.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting {}", p.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("data/ab/abcd", b"pack").unwrap();
        b.put("index/ff", b"idx").unwrap();
        assert_eq!(b.get("data/ab/abcd").unwrap(), b"pack");
        assert_eq!(b.get_range("data/ab/abcd", 1, 2).unwrap(), b"ac");
        assert!(b.get_range("data/ab/abcd", 3, 2).is_err());
        assert_eq!(
            b.list("data").unwrap(),
            vec![Listed {
                name: "data/ab/abcd".to_string(),
                size: 4
            }]
        );
        assert!(b.put_new("locks/x", b"1").unwrap());
        assert!(!b.put_new("locks/x", b"2").unwrap());
        assert_eq!(b.get("locks/x").unwrap(), b"1");
        b.delete("data/ab/abcd").unwrap();
        assert_eq!(b.size("data/ab/abcd").unwrap(), None);
        assert!(b.list("nothing").unwrap().is_empty());
    }

    /// Locks come and go while other hosts list them: a file removed between the directory
    /// read and its stat is simply not in the listing, never an error (the fleet test once
    /// failed a backup with "listing …/locks: No such file or directory").
    #[test]
    fn files_removed_during_a_listing_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("locks/keep", b"1").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        // The first bad listing, checked after the churning thread has stopped, so a failure
        // fails the test instead of leaving that thread spinning.
        let bad = std::thread::scope(|s| {
            s.spawn(|| {
                // 32 files alive at any time, one created and one removed per step.
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    b.put(&format!("locks/l{}", i % 64), b"x").unwrap();
                    b.delete(&format!("locks/l{}", (i + 32) % 64)).unwrap();
                    i += 1;
                }
            });
            let bad = (0..20_000).map(|_| b.list("locks")).find(|l| {
                !l.as_ref()
                    .is_ok_and(|l| l.iter().any(|l| l.name == "locks/keep"))
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            bad
        });
        assert!(bad.is_none(), "a listing during the churn: {bad:?}");
    }
}
