//! Storage behind a small interface. Everything above this module addresses repository
//! objects by relative, '/'-separated names and assumes nothing POSIX: an object store can
//! implement the same trait.

mod local;

pub use local::LocalBackend;

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
}
