//! `repair packs`: salvage what can be read from damaged packs, drop the rest.
//!
//! A pack whose bytes changed fails its name check, but most of its blobs are usually
//! intact: each is opened on its own (AEAD tag, then content hash), using the index's
//! record of where it lies, since a damaged pack's own header may be what broke. Readable
//! blobs are resealed into new packs; unreadable ones leave the index, so the next backup
//! that meets the same data stores it again (the chunk id is the content's hash, so every
//! old snapshot that needs it is whole again). What remains lost is for `repair snapshots`.

use crate::repo::index::IndexPack;
use crate::repo::lock::LockKind;
use crate::repo::pack::{open_blob, pack_name, reseal_blob, verify_pack, PackEntry};
use crate::repo::packer::Packer;
use crate::repo::Repository;
use crate::{Error, Id, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Default, serde::Serialize)]
pub struct PacksReport {
    pub dry_run: bool,
    pub packs_checked: usize,
    /// Damaged or missing packs, and why.
    pub damaged: Vec<String>,
    pub blobs_salvaged: usize,
    pub blobs_lost: usize,
    pub packs_written: usize,
    pub index_files_rewritten: usize,
    pub packs_deleted: usize,
}

/// What the index files say of one pack.
#[derive(Default)]
struct Known {
    salt: [u8; 32],
    /// Entries by offset (two index files may name the same blob).
    entries: BTreeMap<u32, PackEntry>,
    named_by: HashSet<String>,
}

/// Repairs the packs given (id prefixes), or, with none given, every indexed pack that
/// fails verification (which reads the whole repository, as `check --read-data` does).
pub fn run(repo: &Repository, only: &[String], dry_run: bool, quiet: bool) -> Result<PacksReport> {
    let lock = repo.lock(LockKind::Exclusive, "repair packs")?;
    let mut rep = PacksReport {
        dry_run,
        ..Default::default()
    };
    let names = repo.index_files()?;
    let mut known: HashMap<Id, Known> = HashMap::new();
    let mut files: HashMap<String, Vec<IndexPack>> = HashMap::new();
    for name in &names {
        let idx = repo.read_index(name).map_err(|e| {
            Error::Other(format!(
                "{e}; run `cairn repair index` first, so that every pack's blobs are known"
            ))
        })?;
        for p in &idx.packs {
            let k = known.entry(p.pack).or_default();
            k.salt = p.salt;
            k.named_by.insert(name.clone());
            for e in &p.entries {
                k.entries.insert(e.offset, *e);
            }
        }
        files.insert(name.clone(), idx.packs);
    }
    let on_disk = repo.list_packs()?;
    let mut candidates: Vec<Id> = if only.is_empty() {
        known.keys().copied().collect()
    } else {
        let mut v = Vec::new();
        for spec in only {
            let prefix = spec.to_ascii_lowercase();
            let hits: Vec<Id> = known
                .keys()
                .filter(|p| p.to_hex().starts_with(&prefix) && !prefix.is_empty())
                .copied()
                .collect();
            match hits.as_slice() {
                [one] => v.push(*one),
                [] => {
                    return Err(Error::Usage(format!(
                        "no indexed pack starts with {spec:?} (a pack no index names needs \
                         `cairn repair index` instead)"
                    )))
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "{} packs start with {spec:?}; give more digits",
                        hits.len()
                    )))
                }
            }
        }
        v
    };
    candidates.sort();
    rep.packs_checked = candidates.len();
    let bar = crate::progress::bytes_bar(
        candidates
            .iter()
            .map(|p| on_disk.get(p).copied().unwrap_or(0))
            .sum(),
        "verify",
        quiet,
    );
    let damaged: Vec<(Id, String)> = candidates
        .par_iter()
        .with_max_len(1)
        .filter_map(|pack| {
            let r = match on_disk.get(pack) {
                None => Err(Error::corrupt(pack_name(pack), "the pack is missing")),
                Some(_) => verify_pack(repo, pack, known[pack].entries.len()),
            };
            bar.inc(on_disk.get(pack).copied().unwrap_or(0));
            r.err().map(|e| (*pack, e.to_string()))
        })
        .collect();
    bar.finish_and_clear();
    let mut damaged = damaged;
    damaged.sort();
    rep.damaged = damaged.iter().map(|(_, e)| e.clone()).collect();
    if damaged.is_empty() {
        return Ok(rep);
    }

    // Salvage, blob by blob.
    let mut packer = (!dry_run).then(|| Packer::new(repo));
    let mut written_index = Vec::new();
    for (pack, _) in &damaged {
        let k = &known[pack];
        let bytes = repo.backend.get(&pack_name(pack)).unwrap_or_default();
        let old = repo.keys.sealer(&k.salt);
        for e in k.entries.values() {
            let end = e.offset as usize + e.length as usize;
            let blob = bytes.get(e.offset as usize..end).and_then(|stored| {
                let new = packer.as_ref().map_or(&old, |p| p.sealer());
                // Salvage trusts only a blob whose content still hashes to its id.
                open_blob(&repo.keys, &old, e, stored, pack).ok()?;
                reseal_blob(&old, new, e, stored, pack).ok()
            });
            match (blob, packer.as_mut()) {
                (None, _) => rep.blobs_lost += 1,
                (Some(_), None) => rep.blobs_salvaged += 1,
                (Some(b), Some(p)) => {
                    rep.blobs_salvaged += 1;
                    if let Some(w) = p.add(&b)? {
                        written_index.push(w.name);
                    }
                }
            }
        }
    }
    let Some(mut packer) = packer else {
        return Ok(rep);
    };
    if let Some(w) = packer.finish()? {
        written_index.push(w.name);
    }
    rep.packs_written = packer.packs_written;
    drop(packer);

    // Index files naming a damaged pack are rewritten without it, then removed; only
    // then the damaged packs go.
    lock.check()?;
    let bad: HashSet<Id> = damaged.iter().map(|(p, _)| *p).collect();
    let affected: Vec<&String> = {
        let mut v: Vec<&String> = bad.iter().flat_map(|p| &known[p].named_by).collect();
        v.sort();
        v.dedup();
        v
    };
    let mut kept: Vec<IndexPack> = Vec::new();
    for name in &affected {
        kept.extend(
            files[*name]
                .iter()
                .filter(|p| !bad.contains(&p.pack))
                .cloned(),
        );
    }
    let rewritten = super::write_index_files(repo, kept)?;
    lock.check()?;
    for name in affected
        .iter()
        .filter(|n| !rewritten.contains(n) && !written_index.contains(n))
    {
        repo.delete_listed(name)?;
        rep.index_files_rewritten += 1;
    }
    for pack in &bad {
        repo.backend.delete(&pack_name(pack))?;
        rep.packs_deleted += 1;
    }
    Ok(rep)
}
