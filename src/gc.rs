//! `prune`: delete what no snapshot needs, repack what is mostly garbage.
//!
//! 1. **Mark**: every table and chunk reachable from every snapshot. A snapshot that cannot
//!    be read, or a blob the index lacks, stops prune: it cannot know what is garbage then.
//! 2. **Plan**: walk the index files; of each needed blob one copy is kept (the one named
//!    by the newest index file: the copy a backup stored again next to newer data).
//!    A pack with nothing kept is deleted; one whose unused share exceeds `max_unused` is
//!    repacked; the rest stay as they are. Packs no index names (left by interrupted
//!    backups) are deleted.
//! 3. **Repack**: the kept blobs of those packs are verified and resealed into new packs.
//! 4. **Index**: new index files naming exactly the kept blobs are written.
//! 5. **Delete**: only now the old index files, then the old packs.
//!
//! The order makes a crash harmless at any instant: until step 5 every old file is still
//! there, and after the old index files are gone no index names a pack being deleted.
//! Prune holds the exclusive lock: backups (shared lock) wait or fail while it runs, so no
//! backup can reuse a blob that prune is deleting.

use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::lock::LockKind;
use crate::repo::pack::{pack_name, parse_pack, read_header, reseal_blob, PackEntry};
use crate::repo::packer::{Packer, INDEX_FLUSH_ENTRIES};
use crate::repo::Repository;
use crate::snapshot::load_table;
use crate::{snapshot, Error, Id, Result};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

pub struct PruneOptions {
    /// Repack a pack when more than this share (0–1) of its bytes is unused.
    pub max_unused: f64,
    pub dry_run: bool,
    pub quiet: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub blobs_used: usize,
    pub packs_before: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_unreferenced: usize,
    /// Packs no index named but holding needed blobs (an index file was lost): indexed
    /// again, kept.
    pub packs_adopted: usize,
    pub packs_written: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: i64,
    pub index_files_deleted: usize,
    pub index_files_written: usize,
    pub duration_secs: f64,
}

/// What prune does with one pack.
#[derive(Default)]
struct PackPlan {
    salt: [u8; 32],
    keep: Vec<PackEntry>,
    /// Offsets of the entries already counted, so each blob counts once.
    seen: HashSet<u32>,
    used_bytes: u64,
    total_bytes: u64,
}

/// A named point where tests kill prune with SIGKILL (`CAIRN_CRASH_AT=<point>`), to prove
/// that a crash there leaves a sound repository. Costs one env lookup per point.
fn crash_point(name: &str) {
    if std::env::var("CAIRN_CRASH_AT").is_ok_and(|v| v == name) {
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Indexes the packs that no index file names (step 0); returns what was indexed.
fn adopt_orphans(repo: &Repository, dry_run: bool) -> Result<Option<IndexFile>> {
    let on_disk = repo.list_packs()?;
    let mut named = HashSet::new();
    for name in repo.index_files()? {
        let idx = repo.read_index(&name).map_err(|e| {
            Error::Other(format!(
                "prune stops: {e}. Without every index file it cannot tell which packs are \
                 garbage; run `cairn repair index` first"
            ))
        })?;
        named.extend(idx.packs.iter().map(|p| p.pack));
    }
    let mut idx = IndexFile::default();
    let mut orphans: Vec<(&Id, &u64)> =
        on_disk.iter().filter(|(p, _)| !named.contains(p)).collect();
    orphans.sort();
    for (pack, size) in orphans {
        // An unreadable header: nothing of it can be used; it is deleted as garbage.
        if let Ok(c) = read_header(&*repo.backend, &repo.keys, pack, *size) {
            idx.packs.push(IndexPack {
                pack: *pack,
                salt: c.header.salt,
                entries: c.entries,
            });
        }
    }
    if idx.packs.is_empty() {
        return Ok(None);
    }
    if !dry_run {
        repo.write_index(&idx)?;
    }
    Ok(Some(idx))
}

pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let started = Instant::now();
    let lock = repo.lock(LockKind::Exclusive, "prune")?;
    let mut rep = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // 0. Adopt. A pack no index file names is normally garbage of an interrupted backup,
    // but after an index file was lost it holds chunks snapshots need: index every such
    // pack whose header reads, so marking sees its blobs. The unused ones are deleted
    // below like any other pack with nothing in use; the needed ones stay.
    let adopted = adopt_orphans(repo, opts.dry_run)?;

    // 1. Mark.
    let cache = repo.index_cache()?;
    if let Some(idx) = &adopted {
        if opts.dry_run {
            cache.add("index/(dry run: packs no index names)", idx)?;
        }
    }
    let reader = cache.reader()?;
    let mut used: HashSet<Id> = HashSet::new();
    let loaded = snapshot::load_all(repo)?;
    if let Some(d) = loaded.damaged.first() {
        return Err(Error::Other(format!(
            "prune stops: {} snapshot file(s) cannot be read ({}: {}), so prune cannot tell which data they need and deletes nothing. Remove them with `cairn forget ID` (or put back an intact copy), then prune again",
            loaded.damaged.len(),
            d.name,
            d.error
        )));
    }
    let snapshots = loaded.snapshots;
    rep.snapshots = snapshots.len();
    for (sid, snap) in &snapshots {
        for disk in snap.items() {
            for tid in disk.tables.iter().flatten() {
                if !used.insert(*tid) {
                    continue; // an unchanged span: its chunks are marked already
                }
                let table = load_table(repo, &reader, tid).map_err(|e| {
                    Error::Other(format!(
                        "snapshot {} (VM {}) disk {}: {e}; prune stops and deletes nothing, since \
                         it cannot tell what is unused",
                        sid.short(),
                        snap.vm,
                        disk.name
                    ))
                })?;
                for cid in table.extents.iter().filter_map(|e| e.id) {
                    if used.insert(cid) && !reader.contains(&cid)? {
                        return Err(Error::Other(format!(
                            "snapshot {} (VM {}) needs chunk {}, which no index file and no pack \
                             header names; prune stops and deletes nothing. Run `cairn check \
                             --read-data`",
                            sid.short(),
                            snap.vm,
                            cid.short()
                        )));
                    }
                }
            }
        }
    }
    rep.blobs_used = used.len();
    drop(reader);
    drop(cache);

    // 2. Plan.
    let on_disk: HashMap<Id, u64> = repo.list_packs()?;
    rep.packs_before = on_disk.len();
    rep.bytes_before = on_disk.values().sum();
    let old_index = repo.index_files()?;
    let mut indexes = Vec::with_capacity(old_index.len());
    for name in &old_index {
        indexes.push(repo.read_index(name)?);
    }
    // Of a blob stored twice, the copy named by the newest index file is kept (a backup
    // stores a copy again next to new data so that the newest snapshot reads
    // contiguously; the old copy is what becomes garbage). Ties keep the first met.
    let mut winner: HashMap<Id, (u64, Id, u32)> = HashMap::with_capacity(used.len());
    for idx in &indexes {
        for p in &idx.packs {
            for e in &p.entries {
                if !used.contains(&e.id) {
                    continue;
                }
                let w = winner
                    .entry(e.id)
                    .or_insert((idx.created, p.pack, e.offset));
                if idx.created > w.0 {
                    *w = (idx.created, p.pack, e.offset);
                }
            }
        }
    }
    let mut plans: HashMap<Id, PackPlan> = HashMap::new();
    let mut unplaced = used;
    for p in indexes.into_iter().flat_map(|i| i.packs) {
        let plan = plans.entry(p.pack).or_default();
        plan.salt = p.salt;
        for e in p.entries {
            // An interrupted prune leaves two index files naming the same blob.
            if !plan.seen.insert(e.offset) {
                continue;
            }
            plan.total_bytes += e.length as u64;
            let wins = winner
                .get(&e.id)
                .is_some_and(|w| (w.1, w.2) == (p.pack, e.offset));
            if wins && unplaced.remove(&e.id) {
                plan.used_bytes += e.length as u64;
                plan.keep.push(e);
            }
        }
    }
    drop(winner);
    if let Some(id) = unplaced.iter().next() {
        return Err(Error::Other(format!(
            "{} needed blobs (e.g. {}) vanished from the index while prune read it; nothing was deleted",
            unplaced.len(),
            id.short()
        )));
    }
    let mut delete: Vec<Id> = Vec::new();
    let mut repack: Vec<Id> = Vec::new();
    let mut keep: Vec<Id> = Vec::new();
    for (id, plan) in &plans {
        let unused = 1.0 - plan.used_bytes as f64 / plan.total_bytes.max(1) as f64;
        if plan.keep.is_empty() {
            delete.push(*id);
        } else if !on_disk.contains_key(id) {
            return Err(Error::Other(format!(
                "pack {} holds needed blobs but is missing; prune stops. Run `cairn check`",
                pack_name(id)
            )));
        } else if unused > opts.max_unused {
            repack.push(*id);
        } else {
            keep.push(*id);
        }
    }
    let unreferenced: Vec<Id> = on_disk
        .keys()
        .filter(|p| !plans.contains_key(p))
        .copied()
        .collect();
    rep.packs_deleted = delete.len();
    rep.packs_repacked = repack.len();
    rep.packs_unreferenced = unreferenced.len();
    if let Some(idx) = &adopted {
        let kept: Vec<&Id> = idx
            .packs
            .iter()
            .map(|p| &p.pack)
            .filter(|p| plans.get(p).is_some_and(|pl| !pl.keep.is_empty()))
            .collect();
        rep.packs_adopted = kept.len();
        rep.packs_unreferenced += idx.packs.len() - kept.len();
    }
    let kept_bytes: u64 = keep.iter().map(|p| on_disk[p]).sum();
    let repacked_bytes: u64 = repack.iter().map(|p| plans[p].used_bytes).sum();
    if opts.dry_run {
        rep.bytes_after = kept_bytes + repacked_bytes;
        rep.bytes_freed = rep.bytes_before as i64 - rep.bytes_after as i64;
        rep.duration_secs = started.elapsed().as_secs_f64();
        return Ok(rep);
    }

    // 3. Repack.
    let mut written_index = Vec::new();
    let bar = crate::progress::bytes_bar(repacked_bytes, "repack", opts.quiet);
    let mut packer = Packer::new(repo);
    repack.sort();
    for (n, pack) in repack.iter().enumerate() {
        let bytes = repo.backend.get(&pack_name(pack))?;
        let contents = parse_pack(&repo.keys, pack, &bytes)?;
        let old = contents.header.sealer(&repo.keys);
        for e in &plans[pack].keep {
            let stored = &bytes[e.offset as usize..e.offset as usize + e.length as usize];
            let blob = reseal_blob(&repo.keys, &old, packer.sealer(), e, stored, pack)?;
            if let Some(w) = packer.add(&blob)? {
                written_index.push(w.name);
            }
            bar.inc(e.length as u64);
        }
        if n == 0 {
            crash_point("repack");
        }
    }
    if let Some(w) = packer.finish()? {
        written_index.push(w.name);
    }
    rep.packs_written = packer.packs_written;
    drop(packer);
    bar.finish_and_clear();

    // 4. Index for the packs that stay as they are. A prune that stalled until others
    // took its lock for stale must not act on its old plan.
    lock.check()?;
    keep.sort();
    let mut idx = IndexFile::default();
    for pack in &keep {
        let plan = &plans[pack];
        idx.packs.push(IndexPack {
            pack: *pack,
            salt: plan.salt,
            entries: plan.keep.clone(),
        });
        if idx.blob_count() >= INDEX_FLUSH_ENTRIES {
            written_index.push(repo.write_index(&std::mem::take(&mut idx))?);
        }
    }
    if !idx.packs.is_empty() {
        written_index.push(repo.write_index(&idx)?);
    }
    rep.index_files_written = written_index.len();
    crash_point("index");

    // 5. Delete: old index files first, then packs.
    lock.check()?;
    let fresh: HashSet<&String> = written_index.iter().collect();
    for name in old_index.iter().filter(|n| !fresh.contains(n)) {
        repo.backend.delete(name)?;
        rep.index_files_deleted += 1;
    }
    let doomed: Vec<&Id> = delete.iter().chain(&repack).chain(&unreferenced).collect();
    for (n, pack) in doomed.iter().enumerate() {
        repo.backend.delete(&pack_name(pack))?;
        if n == doomed.len() / 2 {
            crash_point("delete");
        }
    }
    rep.bytes_after = repo.list_packs()?.values().sum();
    rep.bytes_freed = rep.bytes_before as i64 - rep.bytes_after as i64;
    rep.duration_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}
