//! `repair index`: make the index name exactly the blobs the packs hold.
//!
//! Index files that cannot be read are replaced; index files that name packs which no
//! longer exist are rewritten without them (so no backup deduplicates against a blob that
//! is gone); packs that no readable index file names are read back from their own sealed
//! headers (two small range reads each, not the whole pack) and indexed again.

use crate::repo::index::IndexPack;
use crate::repo::lock::LockKind;
use crate::repo::pack::{pack_name, read_header};
use crate::repo::Repository;
use crate::{Error, Id, Result};
use rayon::prelude::*;
use std::collections::HashSet;

#[derive(Debug, Default, serde::Serialize)]
pub struct IndexReport {
    pub dry_run: bool,
    pub index_files: usize,
    /// Index files that could not be read; replaced.
    pub damaged: Vec<String>,
    /// Index files naming packs that are gone; rewritten without them.
    pub naming_missing_packs: Vec<String>,
    /// Packs that are gone, whose blobs are now out of the index.
    pub missing_packs: Vec<String>,
    /// Packs no readable index file named, indexed again from their headers.
    pub packs_recovered: usize,
    pub blobs_recovered: usize,
    /// Packs whose header cannot be read either: their blobs cannot be indexed.
    pub unreadable_packs: Vec<String>,
    pub index_files_written: usize,
    pub index_files_deleted: usize,
}

pub fn run(repo: &Repository, dry_run: bool) -> Result<IndexReport> {
    let lock = repo.lock(LockKind::Exclusive, "repair index")?;
    let mut rep = IndexReport {
        dry_run,
        ..Default::default()
    };
    let on_disk = repo.list_packs()?;
    let names = repo.index_files()?;
    rep.index_files = names.len();
    let mut covered: HashSet<Id> = HashSet::new();
    let mut replace: Vec<String> = Vec::new();
    let mut keep: Vec<IndexPack> = Vec::new();
    let mut missing: HashSet<Id> = HashSet::new();
    for name in &names {
        match repo.read_index(name) {
            Ok(idx) => {
                let (here, gone): (Vec<IndexPack>, Vec<IndexPack>) = idx
                    .packs
                    .into_iter()
                    .partition(|p| on_disk.contains_key(&p.pack));
                covered.extend(here.iter().map(|p| p.pack));
                if !gone.is_empty() {
                    missing.extend(gone.iter().map(|p| p.pack));
                    rep.naming_missing_packs.push(name.clone());
                    replace.push(name.clone());
                    keep.extend(here);
                }
            }
            Err(Error::Corrupt { .. }) => {
                rep.damaged.push(name.clone());
                replace.push(name.clone());
            }
            Err(e) => return Err(e),
        }
    }
    rep.missing_packs = missing.iter().map(pack_name).collect();
    rep.missing_packs.sort();
    let mut orphans: Vec<(Id, u64)> = on_disk
        .iter()
        .filter(|(p, _)| !covered.contains(p))
        .map(|(p, s)| (*p, *s))
        .collect();
    orphans.sort();
    let headers: Vec<(Id, Result<IndexPack>)> = orphans
        .par_iter()
        .map(|&(pack, size)| {
            let r = read_header(&*repo.backend, &repo.keys, &pack, size).map(|c| IndexPack {
                pack,
                salt: c.header.salt,
                entries: c.entries,
            });
            (pack, r)
        })
        .collect();
    for (pack, r) in headers {
        match r {
            Ok(p) => {
                rep.packs_recovered += 1;
                rep.blobs_recovered += p.entries.len();
                keep.push(p);
            }
            Err(e) => rep
                .unreadable_packs
                .push(format!("{}: {e}", pack_name(&pack))),
        }
    }
    if dry_run {
        return Ok(rep);
    }
    lock.check()?;
    let written = super::write_index_files(repo, keep)?;
    rep.index_files_written = written.len();
    lock.check()?;
    for name in replace.iter().filter(|n| !written.contains(n)) {
        repo.delete_listed(name)?;
        rep.index_files_deleted += 1;
    }
    Ok(rep)
}
