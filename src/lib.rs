//! cairn: a deduplicating, content-addressed backup repository for VM disk images.
//!
//! Layers depend downward only:
//! `cli` → `backup` / `restore` / `check` → `snapshot` / `chunker` / `image` → `repo` → `crypto` /
//! `backend`. See `repo-format.md` for every byte this crate writes.

pub mod backend;
pub mod backup;
pub mod blockdev;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod crypto;
pub mod error;
pub mod files;
pub mod forget;
pub mod fs;
pub mod gc;
pub mod id;
pub mod image;
pub mod progress;
pub mod repair;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod vm;

#[cfg(test)]
mod testalloc;
#[cfg(test)]
#[global_allocator]
static ALLOC: testalloc::Tracking = testalloc::Tracking;

pub use error::{Error, Result};
pub use id::Id;
