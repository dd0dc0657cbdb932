//! `prune`: delete what no snapshot needs, repack what is mostly garbage.
//!
//! Two modes:
//!
//! - **Two-phase** (the default): runs beside backups and readers. It marks, plans and
//!   repacks as below, but deletes nothing it just found unused: it writes a record of the
//!   candidate packs (`pending`), and deletes the candidates of *earlier* records whose
//!   grace period has passed and whose backups have all finished, after marking again so
//!   that anything a backup has used since is kept. Backups never reference candidates.
//! - **Exclusive** (`--exclusive`): holds the exclusive lock, so no backup runs, and
//!   deletes at once.
//!
//! Steps: 0. **adopt** packs no index file names (`mark`); 1. **mark** every table and
//! chunk reachable from every snapshot (`mark`); 2. **plan** which copy of each needed blob
//! is kept and what becomes of each pack (`plan`); 3. **repack** the used blobs of mostly
//! unused packs into new packs (additive: a new index names them); then either 4./5.
//! rewrite the index and delete (exclusive), or record and sweep (`pending`).
//!
//! Every write happens before the deletes that depend on it, so a crash at any instant
//! leaves a repository `check` passes; repo-format.md section 15 has the table.

pub mod mark;
pub mod pending;
mod plan;

use crate::repo::index::IndexFile;
use crate::repo::lock::{list_locks, Lock, LockKind};
use crate::repo::pack::pack_name;
use crate::repo::Repository;
use crate::{crash_point, Id, Result};
use plan::Plan;
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct PruneOptions {
    /// Repack a pack when more than this share (0–1) of its bytes is unused.
    pub max_unused: f64,
    pub dry_run: bool,
    pub quiet: bool,
    /// Hold the exclusive lock and delete at once (backups wait).
    pub exclusive: bool,
    /// Two-phase: how old a record must be (by the storage's clock) before its candidates
    /// are deleted.
    pub grace: Duration,
}

/// The default grace period of two-phase collection.
pub const GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// "two-phase" or "exclusive".
    pub mode: &'static str,
    pub snapshots: usize,
    pub blobs_used: usize,
    pub packs_before: usize,
    /// Packs deleted by this run.
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_unreferenced: usize,
    /// Packs no index named but holding needed blobs (an index file was lost): indexed
    /// again, kept.
    pub packs_adopted: usize,
    pub packs_written: usize,
    /// Two-phase: packs recorded now, to be deleted by a later prune.
    pub packs_pending: usize,
    /// Two-phase: records swept (their candidates deleted or kept) by this run.
    pub records_swept: usize,
    /// Two-phase: why the remaining records were not swept yet.
    pub records_waiting: Vec<String>,
    /// Candidates kept because a snapshot finished since used them.
    pub packs_resurrected: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: i64,
    pub index_files_deleted: usize,
    pub index_files_written: usize,
    pub duration_secs: f64,
}

pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let started = Instant::now();
    let kind = if opts.exclusive {
        LockKind::Exclusive
    } else {
        LockKind::Prune
    };
    let lock = repo.lock(kind, "prune")?;
    let mut rep = PruneReport {
        dry_run: opts.dry_run,
        mode: if opts.exclusive {
            "exclusive"
        } else {
            "two-phase"
        },
        ..Default::default()
    };
    // Two-phase: the other locks held now, listed *before* marking, so that every backup
    // not among them has finished and its snapshot is seen by the mark.
    let held = if opts.exclusive {
        HashSet::new()
    } else {
        other_locks(repo, &lock)?
    };
    let adopted = mark::adopt_orphans(repo, opts.dry_run)?;
    let loaded = mark::snapshots(repo)?;
    let cache = repo.index_cache()?;
    if let (Some(idx), true) = (&adopted, opts.dry_run) {
        cache.add("index/(dry run: packs no index names)", idx)?;
    }
    let used = mark::mark(repo, &cache, &loaded)?;
    drop(cache);
    rep.snapshots = loaded.snapshots.len();
    rep.blobs_used = used.len();
    let before = repo.list_packs()?;
    rep.packs_before = before.len();
    rep.bytes_before = before.values().sum();
    if !opts.exclusive && !opts.dry_run {
        sweep(repo, &lock, &held, &used, opts.grace, &mut rep)?;
    }
    let plan = Plan::make(repo, &used, opts.max_unused)?;
    rep.packs_repacked = plan.repack.len();
    rep.packs_unreferenced = plan.unreferenced.len();
    if let Some(idx) = &adopted {
        let kept = idx
            .packs
            .iter()
            .filter(|p| {
                plan.packs
                    .get(&p.pack)
                    .is_some_and(|pl| !pl.keep.is_empty())
            })
            .count();
        rep.packs_adopted = kept;
        rep.packs_unreferenced += idx.packs.len() - kept;
    }
    let kept_bytes: u64 = plan.keep.iter().map(|p| plan.on_disk[p]).sum();
    let repacked_bytes: u64 = plan.repack.iter().map(|p| plan.packs[p].used_bytes).sum();
    if opts.dry_run {
        rep.packs_deleted = plan.delete.len();
        rep.bytes_after = kept_bytes + repacked_bytes;
        rep.bytes_freed = rep.bytes_before as i64 - rep.bytes_after as i64;
        rep.duration_secs = started.elapsed().as_secs_f64();
        return Ok(rep);
    }
    let (written, packs_written) = plan.repack(repo, opts.quiet)?;
    rep.packs_written = packs_written;
    rep.index_files_written += written.len();
    lock.check()?;
    if opts.exclusive {
        delete_now(repo, &lock, &plan, &mut rep)?;
    } else {
        record(repo, &lock, &plan, &mut rep)?;
    }
    rep.bytes_after = repo.list_packs()?.values().sum();
    rep.bytes_freed = rep.bytes_before as i64 - rep.bytes_after as i64;
    rep.duration_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// Exclusive mode: no backup runs, so what the plan found unused goes at once.
fn delete_now(repo: &Repository, lock: &Lock, plan: &Plan, rep: &mut PruneReport) -> Result<()> {
    let doomed: HashSet<Id> = plan
        .delete
        .iter()
        .chain(&plan.repack)
        .chain(&plan.unreferenced)
        .copied()
        .collect();
    drop_packs(repo, lock, &plan.index, doomed, rep)?;
    // Whatever earlier two-phase runs recorded is decided now.
    for f in pending::list(repo)?.0 {
        repo.delete_listed(&f.name)?;
    }
    Ok(())
}

/// Deletes packs: the index files naming any of them are written again without them
/// (keeping their time, so which copy of a blob is newest does not change; the others are
/// left alone, so proxies' caches update by what changed), the old files go, then the
/// packs. A crash anywhere leaves either both index files (duplicates are harmless) or
/// packs no index names (the next prune deletes them).
fn drop_packs(
    repo: &Repository,
    lock: &Lock,
    index: &[(String, IndexFile)],
    doomed: HashSet<Id>,
    rep: &mut PruneReport,
) -> Result<()> {
    lock.check()?;
    let mut replaced = Vec::new();
    for (name, idx) in index {
        if !idx.packs.iter().any(|p| doomed.contains(&p.pack)) {
            continue;
        }
        let kept = IndexFile {
            packs: idx
                .packs
                .iter()
                .filter(|p| !doomed.contains(&p.pack))
                .cloned()
                .collect(),
            created: idx.created,
        };
        if !kept.packs.is_empty() {
            repo.write_index(&kept)?;
            rep.index_files_written += 1;
        }
        replaced.push(name);
    }
    crash_point("index");
    lock.check()?;
    for name in replaced {
        repo.delete_listed(name)?;
        rep.index_files_deleted += 1;
    }
    let mut doomed: Vec<Id> = doomed.into_iter().collect();
    doomed.sort();
    for (n, p) in doomed.iter().enumerate() {
        repo.backend.delete(&pack_name(p))?;
        if n == doomed.len() / 2 {
            crash_point("delete");
        }
    }
    rep.packs_deleted += doomed.len();
    Ok(())
}

/// Two-phase mode: records the packs found unused now (not yet recorded), then the locks
/// that might not know of the record.
fn record(repo: &Repository, lock: &Lock, plan: &Plan, rep: &mut PruneReport) -> Result<()> {
    let already = pending::candidates(repo)?;
    let candidates: Vec<Id> = plan
        .delete
        .iter()
        .chain(&plan.repack)
        .chain(&plan.unreferenced)
        .filter(|p| !already.contains(p))
        .copied()
        .collect();
    rep.packs_pending = candidates.len();
    if candidates.is_empty() {
        return Ok(());
    }
    let (name, record) = pending::write(repo, candidates)?;
    crash_point("record");
    let writers = other_locks(repo, lock)?.into_iter().collect();
    pending::complete(repo, &name, &record, writers)
}

/// The names of the live locks other than `own`.
fn other_locks(repo: &Repository, own: &Lock) -> Result<HashSet<String>> {
    Ok(list_locks(&*repo.backend)?
        .into_iter()
        .filter(|l| l.stale.is_none() && l.name != own.name())
        .map(|l| l.name)
        .collect())
}

/// Two-phase mode: deletes the candidates of every record that is due.
fn sweep(
    repo: &Repository,
    lock: &Lock,
    held: &HashSet<String>,
    used: &HashSet<Id>,
    grace: Duration,
    rep: &mut PruneReport,
) -> Result<()> {
    let (records, unreadable) = pending::list(repo)?;
    for name in unreadable {
        // Unreadable: its deletions can never be done, so it only blocks nothing; remove.
        rep.records_waiting.push(format!(
            "{name}: unreadable, removed (nothing of it is deleted)"
        ));
        repo.delete_listed(&name)?;
    }
    if records.is_empty() {
        return Ok(());
    }
    // The storage's clock: when our own lock file was last written.
    let now = repo
        .backend
        .modified(lock.name())?
        .unwrap_or_else(std::time::SystemTime::now);
    let mut due = Vec::new();
    for f in records {
        let Some(writers) = &f.record.writers else {
            // Its prune died between the two writes: the locks held now cover every
            // backup that might not know of it.
            pending::complete(repo, &f.name, &f.record, held.iter().cloned().collect())?;
            rep.records_waiting.push(format!(
                "{}: completed now; due after the grace period",
                f.name
            ));
            continue;
        };
        let age = now.duration_since(f.modified).unwrap_or_default();
        if age < grace {
            rep.records_waiting.push(format!(
                "{}: {} s old, due at {} s",
                f.name,
                age.as_secs(),
                grace.as_secs()
            ));
            continue;
        }
        if let Some(w) = writers.iter().find(|w| held.contains(*w)) {
            rep.records_waiting.push(format!(
                "{}: waiting for {w} (held when it was written)",
                f.name
            ));
            continue;
        }
        due.push(f);
    }
    if due.is_empty() {
        return Ok(());
    }
    // Mark again: a backup that finished since may use what a record named.
    let mut index = Vec::new();
    for name in repo.index_files()? {
        let idx = repo.read_index(&name)?;
        index.push((name, idx));
    }
    let needed: HashSet<Id> = plan::winners(index.iter().map(|(_, i)| i), used)
        .values()
        .map(|w| w.1)
        .collect();
    let mut doomed: HashSet<Id> = HashSet::new();
    for f in &due {
        for p in &f.record.candidates {
            if needed.contains(p) {
                rep.packs_resurrected += 1;
            } else {
                doomed.insert(*p);
            }
        }
    }
    drop_packs(repo, lock, &index, doomed, rep)?;
    for f in &due {
        repo.delete_listed(&f.name)?;
        rep.records_swept += 1;
    }
    Ok(())
}
