//! Marking: what every snapshot needs, and the packs no index file names.

use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::pack::read_header;
use crate::repo::Repository;
use crate::snapshot::load_table;
use crate::{snapshot, Error, Id, Result};
use rayon::prelude::*;
use std::collections::HashSet;

/// Indexes the packs that no index file names; returns what was indexed. A pack no index
/// file names is normally garbage of an interrupted backup (or the not-yet-indexed pack of
/// a running one), but after an index file was lost it holds chunks snapshots need: every
/// such pack whose header reads is indexed, so marking sees its blobs; the unused ones go
/// like any pack with nothing in use.
pub fn adopt_orphans(repo: &Repository, dry_run: bool) -> Result<Option<IndexFile>> {
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

/// The snapshots to mark from. Read before the index cache is brought up to date: a
/// backup writes its index files before its snapshot, so every snapshot listed here has
/// its index files in the cache then.
pub fn snapshots(repo: &Repository) -> Result<snapshot::Loaded> {
    let loaded = snapshot::load_all(repo)?;
    if let Some(d) = loaded.damaged.first() {
        return Err(Error::Other(format!(
            "prune stops: {} snapshot file(s) cannot be read ({}: {}), so prune cannot tell \
             which data they need and deletes nothing. Remove them with `cairn forget ID` (or \
             put back an intact copy), then prune again",
            loaded.damaged.len(),
            d.name,
            d.error
        )));
    }
    Ok(loaded)
}

/// Every table and chunk reachable from every snapshot. A table that cannot be read, or a
/// chunk no index file names, stops it: nothing can be known to be garbage then.
pub fn mark(
    repo: &Repository,
    cache: &crate::repo::cache::IndexCache,
    loaded: &snapshot::Loaded,
) -> Result<HashSet<Id>> {
    let reader = cache.reader()?;
    let mut used: HashSet<Id> = HashSet::new();
    // Each distinct table once (an unchanged span's table is shared by many snapshots),
    // with the first snapshot and disk naming it, for messages.
    let mut tables = Vec::new();
    for (sid, snap) in &loaded.snapshots {
        for disk in snap.items() {
            for tid in disk.tables.iter().flatten() {
                if used.insert(*tid) {
                    tables.push((*tid, sid, snap, disk));
                }
            }
        }
    }
    // Tables are read several at a time (on object storage each read waits on the
    // network), a batch at a time so that memory holds one batch of tables.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(repo.backend.parallel_writes() * 4)
        .build()
        .map_err(|e| Error::Other(format!("starting prune's readers: {e}")))?;
    for batch in tables.chunks(256) {
        let read: Vec<Result<snapshot::ChunkTable>> = pool.install(|| {
            batch
                .par_iter()
                .map_init(
                    || cache.reader(),
                    |r, (tid, sid, snap, disk)| {
                        let r = r.as_ref().map_err(|e| Error::Other(e.to_string()))?;
                        load_table(repo, r, tid).map_err(|e| {
                            Error::Other(format!(
                                "snapshot {} (VM {}) disk {}: {e}; prune stops and deletes \
                                 nothing, since it cannot tell what is unused",
                                sid.short(),
                                snap.vm,
                                disk.name
                            ))
                        })
                    },
                )
                .collect()
        });
        for (table, (_, sid, snap, _)) in read.into_iter().zip(batch) {
            for cid in table?.extents.iter().filter_map(|e| e.id) {
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
    Ok(used)
}
