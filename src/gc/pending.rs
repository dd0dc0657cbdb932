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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::InitOptions;

    /// Records are read by every backup and prune, from a repository anyone with write
    /// access to the share (or bucket) can change: seeded mutations of a record's bytes
    /// and of its JSON (sealed again, so they reach the parser) never panic, and a record
    /// that does not parse is only ever reported as unreadable, never acted on.
    #[test]
    fn mutated_records_are_unreadable_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path(), None, &InitOptions::default()).unwrap();
        let (name, record) = write(&repo, vec![Id([3; 32]), Id([4; 32])]).unwrap();
        complete(&repo, &name, &record, vec!["locks/ab".into()]).unwrap();
        let good = repo.backend.get(&name).unwrap();
        let json = serde_json::to_vec(&Record {
            writers: Some(vec!["locks/ab".into()]),
            ..record.clone()
        })
        .unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let cases = 3000;
        let (mut parsed, mut refused) = (0, 0);
        for case in 0..cases {
            let base = if case % 2 == 0 { &good } else { &json };
            let mut m = base.clone();
            for _ in 0..1 + next(4) {
                match next(4) {
                    0 => m.truncate(next(m.len() + 1)),
                    1 if !m.is_empty() => {
                        let i = next(m.len());
                        m[i] ^= 1 << next(8);
                    }
                    2 if !m.is_empty() => {
                        let i = next(m.len());
                        m[i] = b"{}[]\",:0-9e\\"[next(12)];
                    }
                    _ => m.extend((0..next(40)).map(|_| next(256) as u8)),
                }
            }
            let bytes = if case % 2 == 0 {
                m
            } else {
                envelope::encode_file(FileKind::Pending, &repo.keys, &m, 3)
            };
            repo.backend.put(&name, &bytes).unwrap();
            let (ok, bad) = list(&repo).unwrap();
            parsed += ok.len();
            refused += bad.len();
            assert_eq!(ok.len() + bad.len(), 1, "case {case}");
            if let Some(f) = ok.first() {
                // Whatever parsed is a well-formed record; nothing else is acted on.
                assert!(f.record.candidates.len() < 1 << 20);
            }
        }
        assert!(refused > cases / 2, "{refused} of {cases} refused");
        eprintln!("pending records: {cases} mutated, {parsed} still parsed, {refused} refused");
    }
}
