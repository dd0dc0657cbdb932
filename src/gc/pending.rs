//! Two-phase collection: a prune writes down what it would delete, and a later prune
//! deletes it once nothing can still need it.
//!
//! Rules (repo-format.md section 15 has them in full):
//! 1. A prune marks, then writes a record `pending/<hex>` naming the packs it found unused
//!    (candidates), then lists the locks and writes the record again with those lock names
//!    (the writers and readers that may not know of it).
//! 2. Every backup, after taking its lock, reads the records and treats blobs in candidate
//!    packs as absent: it stores them again rather than reference them. So a backup that
//!    started after a record exists never needs a candidate.
//! 3. A later prune deletes a record's candidates only when the record is older than the
//!    grace period by the storage's own clock, none of the locks it names is still held
//!    (so every backup that might not have known of it has finished), and, marking again,
//!    no snapshot needs a blob whose kept copy is in the pack (a backup that finished since
//!    resurrects what it used). Index files naming the packs are rewritten without them
//!    first, then the packs and the record go.

use crate::repo::envelope::{self, FileKind};
use crate::repo::files;
use crate::repo::Repository;
use crate::{Error, Id, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::SystemTime;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The packs found unused.
    pub candidates: Vec<Id>,
    /// The locks held when the record was written; None until the second write.
    pub writers: Option<Vec<String>>,
    /// When and where it was made (informational: the storage's clock decides).
    pub created: String,
    pub host: String,
}

/// A record as found, with its name and the storage's time of its last write.
pub struct Found {
    pub name: String,
    pub record: Record,
    pub modified: SystemTime,
}

fn encode(repo: &Repository, r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).expect("record serializes");
    envelope::encode_file(FileKind::Pending, &repo.keys, &json, 3)
}

/// Every readable record, oldest first, and the names of the unreadable ones (those cancel
/// nothing but their own deletion: no sweep acts on a record it cannot read).
pub fn list(repo: &Repository) -> Result<(Vec<Found>, Vec<String>)> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for l in repo.list(files::Folder::Pending)? {
        let bytes = match repo.backend.get(&l.name) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue, // just swept
            Err(e) => return Err(e),
        };
        let record = envelope::decode_file(FileKind::Pending, &repo.keys, &bytes, &l.name)
            .and_then(|j| {
                serde_json::from_slice::<Record>(&j)
                    .map_err(|e| Error::corrupt(&l.name, e.to_string()))
            });
        let Some(modified) = repo.backend.modified(&l.name)? else {
            continue;
        };
        match record {
            Ok(record) => out.push(Found {
                name: l.name,
                record,
                modified,
            }),
            Err(_) => bad.push(l.name),
        }
    }
    out.sort_by_key(|f| f.modified);
    Ok((out, bad))
}

/// The packs some record names: what backups must not reference.
pub fn candidates(repo: &Repository) -> Result<HashSet<Id>> {
    Ok(list(repo)?
        .0
        .into_iter()
        .flat_map(|f| f.record.candidates)
        .collect())
}

/// Writes a new record of `candidates` (the first write: no writers yet); returns it
/// and its name.
pub fn write(repo: &Repository, candidates: Vec<Id>) -> Result<(String, Record)> {
    let name = files::pending(&hex::encode(crate::crypto::random_bytes::<8>()));
    let r = Record {
        candidates,
        writers: None,
        created: chrono::Utc::now().to_rfc3339(),
        host: crate::repo::hostname(),
    };
    repo.backend.put(&name, &encode(repo, &r))?;
    Ok((name, r))
}

/// The second write: the locks held now, which every backup not knowing of the record
/// must be among.
pub fn complete(
    repo: &Repository,
    name: &str,
    record: &Record,
    writers: Vec<String>,
) -> Result<()> {
    let r = Record {
        writers: Some(writers),
        ..record.clone()
    };
    repo.backend.put(name, &encode(repo, &r))
}
