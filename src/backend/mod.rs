//! Storage behind a small interface. Everything above this module addresses repository
//! objects by relative, '/'-separated names and assumes nothing POSIX: an object store can
//! implement the same trait.

mod local;
pub mod s3;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Config};
use std::sync::Arc;

/// Where a repository is: a folder (local disk, NAS mount) or an S3 bucket and prefix.
#[derive(Clone, Debug)]
pub enum Location {
    Local(std::path::PathBuf),
    S3(S3Config),
}

impl Location {
    /// `s3:…` URLs are object storage; anything else is a folder. `options` are the
    /// `--option KEY=VALUE` pairs (`s3.storage-class`, …).
    pub fn parse(s: &std::ffi::OsStr, options: &[(String, String)]) -> crate::Result<Location> {
        match s.to_str() {
            Some(u) if u.starts_with("s3:") => Ok(Location::S3(S3Config::parse(u, options)?)),
            _ => {
                if let Some((k, _)) = options.iter().find(|(k, _)| k.starts_with("s3.")) {
                    return Err(crate::Error::Usage(format!(
                        "--option {k} applies to S3 repositories only"
                    )));
                }
                Ok(Location::Local(std::path::PathBuf::from(s)))
            }
        }
    }

    pub fn open(&self) -> crate::Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(p) => Arc::new(LocalBackend::new(p)),
            Location::S3(c) => Arc::new(S3Backend::open(c.clone())?),
        })
    }

    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3(c) => c.location(),
        }
    }
}

use crate::Result;

pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;
    /// Reads a whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    /// Reads `len` bytes at `offset`; an object too short is an error, not a short read.
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Stores an object durably and atomically: readers see all of it or nothing.
    /// Replaces an existing object of the same name (used for immutable, content-named
    /// objects, where a replacement has the same bytes, and for lock refreshes).
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Stores an object only if none of that name exists; returns false if one did.
    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool>;
    /// The objects directly inside `dir` with their sizes, recursing one level into
    /// two-character fan-out folders (as `data/` uses). Names are relative to `dir`'s
    /// parent, e.g. `data/ab/ab…`. A listing that fails or is cut short is an error, never
    /// a shorter list: callers take absence from a listing as absence.
    fn list(&self, dir: &str) -> Result<Vec<crate::repo::files::Listed>>;
    /// Size of an object, or None if it does not exist.
    fn size(&self, name: &str) -> Result<Option<u64>>;
    /// When an object was last written, by the storage's clock; None if it does not exist.
    fn modified(&self, name: &str) -> Result<Option<std::time::SystemTime>>;
    fn delete(&self, name: &str) -> Result<()>;
    /// How many objects may be written at once (pack uploads): 1 for a folder, more for
    /// object storage, where each request waits on the network.
    fn parallel_writes(&self) -> usize {
        1
    }
    /// Starts an object in `dir` that is written piece by piece and named only when
    /// complete (a pack is named by the hash of its bytes), if this backend can keep it
    /// outside memory meanwhile; None: [`stage`] keeps it in memory.
    fn stage_file(&self, _dir: &str) -> Result<Option<Box<dyn Staged>>> {
        Ok(None)
    }
}

/// An object being written (see [`Backend::stage_file`]); dropped uncommitted, it leaves
/// nothing behind.
pub trait Staged: std::io::Write + Send {
    /// Makes it durable and visible under `name`, atomically as [`Backend::put`] does.
    fn commit(self: Box<Self>, name: &str) -> Result<()>;
}

/// A staged object for `backend`: a temporary file where the backend has files (so a
/// backup holds no pack in memory), else a buffer of `size_hint` bytes put whole at commit.
pub fn stage(backend: &Arc<dyn Backend>, dir: &str, size_hint: usize) -> Result<Box<dyn Staged>> {
    Ok(match backend.stage_file(dir)? {
        Some(s) => s,
        None => Box::new(InMemory {
            buf: Vec::with_capacity(size_hint),
            backend: backend.clone(),
        }),
    })
}

struct InMemory {
    buf: Vec<u8>,
    backend: Arc<dyn Backend>,
}

impl std::io::Write for InMemory {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Staged for InMemory {
    fn commit(self: Box<Self>, name: &str) -> Result<()> {
        self.backend.put(name, &self.buf)
    }
}
