//! `repair snapshots`: rewrite snapshots that reference blobs the index no longer has.
//!
//! Run it after `repair packs` (or `repair index`) and after the next backup of the
//! affected VMs: a backup that meets the same data stores the lost chunks again under the
//! same ids, which heals every snapshot that needs them, so only what is truly gone is
//! left for this command. For each disk, a lost chunk (or a whole lost chunk table) becomes
//! a hole that restores as zeros; the manifest records the lost ranges, drops the disk's
//! source stamp (so the next backup reads that disk instead of reusing these tables) and
//! gains the tag `repaired`. A config file with any lost byte is dropped from the snapshot
//! rather than restored with zeros inside it. A snapshot with nothing restorable left is
//! removed. The rewritten manifest replaces the old one (written first, then the old one
//! deleted; a protection marker moves with it).

use crate::repo::cache::CacheReader;
use crate::repo::lock::LockKind;
use crate::repo::pack::{seal_blob, BlobKind};
use crate::repo::packer::Packer;
use crate::repo::Repository;
use crate::snapshot::{self, ChunkTable, Disk, Extent, Snapshot};
use crate::{Id, Result};
use std::collections::HashSet;

#[derive(Debug, Default, serde::Serialize)]
pub struct SnapshotsReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub repaired: Vec<Repaired>,
    /// Snapshots removed because nothing of them could be restored any more.
    pub removed: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Repaired {
    pub snapshot: String,
    /// The rewritten snapshot's id (None with --dry-run).
    pub new_snapshot: Option<String>,
    pub vm: String,
    pub time: String,
    pub disks: Vec<LostRanges>,
    /// Config files dropped because part of them was lost.
    pub files_dropped: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct LostRanges {
    pub disk: String,
    /// (offset, length) of each disk range now read as zeros.
    pub ranges: Vec<(u64, u64)>,
    pub bytes: u64,
}

pub fn run(repo: &Repository, dry_run: bool) -> Result<SnapshotsReport> {
    let lock = repo.lock(LockKind::Exclusive, "repair snapshots")?;
    let cache = repo.index_cache()?;
    let reader = cache.reader()?;
    let loaded = snapshot::load_all(repo)?;
    let protected = crate::forget::protected_ids(repo)?;
    let mut rep = SnapshotsReport {
        dry_run,
        snapshots: loaded.snapshots.len(),
        ..Default::default()
    };
    let mut packer = (!dry_run).then(|| Packer::new(repo));
    let mut stored = HashSet::new();
    // (old id, new manifest or None to remove)
    let mut plans: Vec<(Id, Option<Snapshot>)> = Vec::new();
    for (id, snap) in &loaded.snapshots {
        let mut new = snap.clone();
        let mut report = Repaired {
            snapshot: id.to_hex(),
            new_snapshot: None,
            vm: snap.vm.clone(),
            time: snap.time.clone(),
            disks: Vec::new(),
            files_dropped: Vec::new(),
        };
        for d in &mut new.disks {
            let lost = heal_disk(repo, &reader, d, packer.as_mut(), &mut stored)?;
            if !lost.is_empty() {
                report.disks.push(LostRanges {
                    disk: d.name.to_string(),
                    bytes: lost.iter().map(|r| r.1).sum(),
                    ranges: lost,
                });
            }
        }
        let mut files = Vec::new();
        for mut f in std::mem::take(&mut new.files) {
            if heal_disk(repo, &reader, &mut f, None, &mut stored)?.is_empty() {
                files.push(f);
            } else {
                report.files_dropped.push(f.name.to_string());
            }
        }
        new.files = files;
        // A catalog with any loss is dropped: `find` then walks the filesystems.
        if let Some(mut c) = new.catalog.take() {
            if heal_disk(repo, &reader, &mut c, None, &mut stored)?.is_empty() {
                new.catalog = Some(c);
            } else {
                report.files_dropped.push("(file catalog)".into());
            }
        }
        if report.disks.is_empty() && report.files_dropped.is_empty() {
            continue;
        }
        let nothing_left = new
            .disks
            .iter()
            .all(|d| d.tables.iter().all(|t| t.is_none()))
            && new.files.is_empty();
        if nothing_left {
            rep.removed.push(id.to_hex());
            plans.push((*id, None));
            continue;
        }
        new.version = snapshot::MANIFEST_VERSION;
        if !new.tags.iter().any(|t| t == "repaired") {
            new.tags.push("repaired".into());
        }
        rep.repaired.push(report);
        plans.push((*id, Some(new)));
    }
    let Some(mut packer) = packer else {
        return Ok(rep);
    };
    packer.finish()?;
    drop(packer);
    lock.check()?;
    for (old, new) in plans {
        if let Some(new) = new {
            let nid = snapshot::save(repo, &new)?;
            if protected.contains(&old) {
                crate::forget::set_protected(repo, &nid, true)?;
            }
            if let Some(r) = rep.repaired.iter_mut().find(|r| r.snapshot == old.to_hex()) {
                r.new_snapshot = Some(nid.to_hex());
            }
        }
        repo.delete_snapshot(&old)?;
        if protected.contains(&old) {
            crate::forget::set_protected(repo, &old, false)?;
        }
    }
    Ok(rep)
}

/// Replaces what `d` lost with holes; returns the lost (offset, length) ranges, merged.
/// New tables are stored through `packer` (None: only find the losses).
fn heal_disk(
    repo: &Repository,
    reader: &CacheReader,
    d: &mut Disk,
    mut packer: Option<&mut Packer>,
    stored: &mut HashSet<Id>,
) -> Result<Vec<(u64, u64)>> {
    let mut lost: Vec<(u64, u64)> = Vec::new();
    let mut add = |off: u64, len: u64| match lost.last_mut() {
        Some(l) if l.0 + l.1 == off => l.1 += len,
        _ => lost.push((off, len)),
    };
    for slot in 0..d.tables.len() {
        let Some(tid) = d.tables[slot] else { continue };
        let base = slot as u64 * d.table_span;
        let span = d.table_span.min(d.size - base);
        let table = match reader.contains(&tid)? {
            true => snapshot::load_table(repo, reader, &tid).ok(),
            false => None,
        };
        let Some(table) = table.filter(|t| t.len() == span) else {
            add(base, span);
            d.tables[slot] = None;
            continue;
        };
        let mut healed = ChunkTable::default();
        let mut changed = false;
        let mut off = base;
        for e in &table.extents {
            let gone = match e.id {
                Some(id) => !reader.contains(&id)?,
                None => false,
            };
            if gone {
                add(off, e.len as u64);
                healed.push(Extent {
                    len: e.len,
                    id: None,
                });
                changed = true;
            } else {
                healed.push(*e);
            }
            off += e.len as u64;
        }
        if !changed {
            continue;
        }
        d.tables[slot] = if healed.is_hole() {
            None
        } else {
            let plain = healed.encode();
            let id = repo.keys.chunk_id(&plain);
            if let Some(p) = packer.as_deref_mut() {
                if !reader.contains(&id)? && stored.insert(id) {
                    let level = repo.config.zstd_level;
                    p.add(&seal_blob(p.sealer(), BlobKind::Table, id, &plain, level))?;
                }
            }
            Some(id)
        };
    }
    if !lost.is_empty() {
        d.stamp = None;
        d.lost.extend(lost.iter().copied());
        d.lost.sort();
    }
    Ok(lost)
}
