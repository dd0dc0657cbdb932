//! `repair`: heal a damaged repository so that one damaged object costs only what depends
//! on it.
//!
//! - [`index`]: rebuild what the index lost (damaged index files, index entries of packs
//!   that are gone) from the packs themselves, whose sealed headers list their blobs.
//! - [`packs`]: salvage every readable blob of damaged packs into new packs and drop the
//!   rest from the index, so the next backup stores them again.
//! - [`snapshots`]: rewrite snapshots that still reference lost blobs, replacing the lost
//!   disk ranges with zeros and saying which ranges those are.
//!
//! Every repair holds the exclusive lock and writes in the repository's order: new packs,
//! then new index files, then (for snapshots) new manifests, and only then deletes what
//! they replace. A crash at any point leaves either the old objects or both old and new,
//! which `check` accepts (a blob named by two index files is fine). All take `--dry-run`.

pub mod index;
pub mod packs;
pub mod snapshots;

use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::packer::INDEX_FLUSH_ENTRIES;
use crate::repo::Repository;
use crate::Result;

/// Writes `packs` as new index files of bounded size; returns their names.
fn write_index_files(repo: &Repository, packs: Vec<IndexPack>) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut idx = IndexFile::default();
    for p in packs {
        idx.packs.push(p);
        if idx.blob_count() >= INDEX_FLUSH_ENTRIES {
            written.push(repo.write_index(&std::mem::take(&mut idx))?);
        }
    }
    if !idx.packs.is_empty() {
        written.push(repo.write_index(&idx)?);
    }
    Ok(written)
}
