//! The repository as a blob store: finding a blob through the index, reading and opening
//! it (range read, AEAD, decompression, content hash), and the claim set that keeps two
//! workers of one session from storing the same new blob twice.
//!
//! Restore, check, prune, repair and the random-access disk view all read blobs through
//! here; nothing above the repository layer builds a pack name or opens a sealed blob.

use super::cache::{BlobLoc, CacheReader};
use super::pack::{open_blob, pack_name};
use super::Repository;
use crate::crypto::Sealer;
use crate::{Error, Id, Result};
use std::collections::HashSet;
use std::sync::Mutex;

/// Reads one blob by id, wherever the index says it is, verified.
pub fn read_blob(repo: &Repository, reader: &CacheReader, id: &Id) -> Result<Vec<u8>> {
    let loc = locate(reader, id)?;
    let stored = repo.backend.get_range(
        &pack_name(&loc.pack),
        loc.entry.offset as u64,
        loc.entry.length as usize,
    )?;
    open_blob(
        &repo.keys,
        &pack_sealer(repo, reader, &loc.pack)?,
        &loc.entry,
        &stored,
        &loc.pack,
    )
}

/// Where the index says `id` is; an error naming the blob if no index file names it.
pub fn locate(reader: &CacheReader, id: &Id) -> Result<BlobLoc> {
    reader.get(id)?.ok_or_else(|| {
        Error::corrupt(
            format!("blob {}", id.short()),
            "it is not in any index file (a pack or index file is missing)",
        )
    })
}

/// The sealer a pack's blobs open with, from the salt its index entry recorded.
pub fn pack_sealer(repo: &Repository, reader: &CacheReader, pack: &Id) -> Result<Sealer> {
    let salt = reader
        .pack_salt(pack)?
        .ok_or_else(|| Error::corrupt(pack_name(pack), "no index file records its salt"))?;
    Ok(repo.keys.sealer(&salt))
}

/// Ids a session is storing that are not yet in the index: the first worker to claim an
/// id stores it, the others only reference it. Claims end when an index file names the
/// blob (the index then answers for it).
#[derive(Default)]
pub struct Claims(Mutex<HashSet<Id>>);

impl Claims {
    /// True if this call is the session's first to want `id` stored.
    pub fn claim(&self, id: Id) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id)
    }

    /// Forgets the claims on ids that an index file now names.
    pub fn release<'a>(&self, ids: impl Iterator<Item = &'a Id>) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            c.remove(id);
        }
    }
}
