//! `backup`: one VM's disks and config files into one snapshot.
//!
//! - this module: what to read (disks unchanged since the parent are reused unread), the
//!   file catalog, the manifest, the report;
//! - `pipeline`: reading, chunking, storing, in bounded memory.
//!
//! Write order: packs, then index files naming only durable packs, then the snapshot
//! manifest; a crash at any point leaves old snapshots untouched and at worst some
//! unreferenced packs.

mod capping;
pub mod changes;
mod pipeline;
mod rechunk;

use pipeline::{Session, WINDOW};

use crate::blockdev::BlockRead;
use crate::repo::lock::LockKind;
use crate::repo::Repository;
use crate::snapshot::{self, Disk, Snapshot, Summary, MANIFEST_VERSION};
use crate::vm::Item;
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct BackupOptions {
    pub vm: String,
    pub host: String,
    pub tags: Vec<String>,
    /// RFC 3339.
    pub time: String,
    /// Read every disk even when its source file looks unchanged.
    pub force_read: bool,
    /// `--format`, `--allow-backing-outside`.
    pub sources: crate::vm::SourceOptions,
    /// Write a file catalog of the disks' filesystems (for `find`); `--no-catalog` off.
    pub catalog: bool,
    /// Change maps (`--changed-extents`, `--bitmap`) and `--verify-changed`.
    pub changes: changes::ChangeOptions,
    /// Share (0–1) of the bytes read that may be spent storing old chunks again so the new
    /// snapshot stays contiguous (`--rewrite-budget`; 0, the default, turns it off).
    pub rewrite_budget: f64,
    pub quiet: bool,
}

/// One disk or config file of a backup, as the report shows it.
#[derive(Debug, serde::Serialize)]
pub struct ItemReport {
    pub name: crate::snapshot::Name,
    #[serde(serialize_with = "crate::report::path")]
    pub path: PathBuf,
    pub format: &'static str,
    /// Who decided the format: `given` (--format), `config` (.vmx), `name-and-content`,
    /// `raw-by-name`, `no-format-found`. None for config files.
    pub format_source: Option<crate::image::Source>,
    /// Every other host file read for it: backing files, parents, extents.
    #[serde(serialize_with = "crate::report::paths")]
    pub follows: Vec<PathBuf>,
    /// Its source was unchanged since the parent snapshot, so it was not read.
    pub unchanged: bool,
    /// Read through a change map: only the changed ranges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_blocks: Option<ChangedBlocks>,
}

/// What a changed-block read of a disk did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangedBlocks {
    /// "extents", "bitmap" or "chain".
    pub map: &'static str,
    pub id: Option<String>,
    /// Bytes the map marked changed.
    pub changed: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes of the disk not read because the map said they did not change.
    pub bytes_skipped: u64,
    /// Bytes fetched from the repository: the parent's chunks around the changes (stored,
    /// compressed sizes).
    pub bytes_from_parent: u64,
}

/// What a backup did, for the user and `--json`.
#[derive(Debug, serde::Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    pub vm: String,
    pub time: String,
    pub parent: Option<String>,
    pub disks: usize,
    /// Config files of a VM folder, stored whole.
    pub files: usize,
    /// Files of a VM folder left out (locks, swap, logs), and why.
    pub skipped: Vec<crate::vm::Skipped>,
    /// What the user should know (also printed on stderr).
    pub warnings: Vec<String>,
    pub items: Vec<ItemReport>,
    /// The file catalog written with the snapshot (None: none, or the parent's reused).
    pub catalog: Option<CatalogReport>,
    /// Disks whose source was unchanged since the parent, so tables were reused unread.
    pub disks_unchanged: usize,
    pub logical_bytes: u64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    /// Bytes of old chunks stored again next to this snapshot's new ones (capping).
    pub bytes_rewritten: u64,
    pub holes_skipped: u64,
    /// Bytes read whole whose segments were the parent's byte for byte, so the parent's cut
    /// points were checked (every chunk hashed) instead of searched for.
    pub bytes_followed: u64,
    pub packs_written: usize,
    pub duration_secs: f64,
}

/// Backs up one VM's disks (and, for a VM folder, its config files) into one snapshot.
///
/// `open` opens the repository. It runs on a thread of its own while the sources are
/// opened and the start of what a change map says to read is asked of the kernel: the
/// key derivation (argon2id, slow on purpose: 0.14 s on the benchmark machine) is then no
/// longer spent waiting in line before the source's first byte arrives, which on a night
/// of few changes is a good part of the whole backup (BENCHMARKS.md G6).
pub fn run(
    open: &(dyn Fn() -> Result<Repository> + Sync),
    paths: &[PathBuf],
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let started = Instant::now();
    if opts.vm.trim().is_empty() {
        return Err(Error::Usage("--vm needs a VM name".into()));
    }
    let (repo, inv, mut maps) = std::thread::scope(|s| {
        let opening = s.spawn(open);
        let inv = crate::vm::inventory(paths, &opts.sources);
        let maps: Vec<_> = inv.as_ref().map_or(Vec::new(), |inv| {
            inv.disks
                .iter()
                .map(|d| {
                    let m = changes::load(&opts.changes, d);
                    if let Some(Ok(m)) = &m {
                        changes::hint(m, d);
                    }
                    m
                })
                .collect()
        });
        (opening.join(), inv, maps)
    });
    // The repository's error first: its exit code (no repository, wrong password) is what
    // a script acts on.
    let repo = &Arc::new(repo.unwrap_or_else(|_| {
        Err(Error::Other(
            "opening the repository stopped unexpectedly".into(),
        ))
    })?);
    let inv = inv?;
    let n_disks = inv.disks.len();
    let skipped = inv.skipped;
    let mut warnings = inv.warnings;
    let mut sources: Vec<Item> = inv.disks.into_iter().chain(inv.files).collect();
    let lock = repo.lock(LockKind::Shared, &format!("backup --vm {}", opts.vm))?;
    // Read after the lock is held: a prune that records later waits for this backup.
    let avoid = crate::gc::pending::candidates(repo)?;
    // Snapshots before the index: the parent's index files are then in the cache.
    let loaded = snapshot::load_all(repo)?;
    let cache = Arc::new(repo.index_cache()?);
    warnings.extend(loaded.warning());
    let parent = loaded
        .snapshots
        .into_iter()
        .rev()
        .find(|(_, s)| s.vm == opts.vm);

    let span = repo.config.table_span;
    let mut disks: Vec<Option<Disk>> = Vec::new();
    let mut to_read = Vec::new();
    {
        let reader = cache.reader()?;
        for (i, src) in sources.iter().enumerate() {
            let reused = (!opts.force_read)
                .then(|| {
                    let parent = parent.as_ref().map(|p| &p.1);
                    unchanged_disk(repo, parent, src, span, &reader, &avoid)
                })
                .transpose()?
                .flatten();
            if reused.is_none() {
                to_read.push(i);
            }
            disks.push(reused);
        }
    }
    let disks_unchanged = disks[..n_disks].iter().filter(|d| d.is_some()).count();

    // Disks with a usable change map are read only where they changed.
    let store = crate::snapshot::view::Store::new(repo.clone(), cache.clone(), 64 << 20);
    let mut incremental = Vec::new();
    let mut full = Vec::new();
    for &i in &to_read {
        let src = &sources[i];
        if i >= n_disks || src.format == crate::files::catalog::CATALOG_FORMAT {
            full.push(i);
            continue;
        }
        match changes::plan(
            &opts.changes,
            maps.get_mut(i).and_then(Option::take),
            parent.as_ref(),
            &src.name,
            &src.path,
            src.image.as_ref(),
            span,
        ) {
            changes::Plan::Incremental { parent: pd, .. }
                if !usable(repo, &cache.reader()?, pd, &avoid)? =>
            {
                warnings.push(format!(
                    "{}: reading the whole disk: the parent's data is not all in the index, or a prune is collecting it",
                    src.name
                ));
                full.push(i);
            }
            changes::Plan::Incremental { map, parent: pd } => {
                incremental.push((i, map, pd.clone()));
                if opts.changes.verify {
                    full.push(i);
                }
            }
            changes::Plan::Full(reason) => {
                if let Some(r) = reason {
                    warnings.push(format!("{}: reading the whole disk: {r}", src.name));
                }
                full.push(i);
            }
        }
    }

    // The file catalog: built from the source disks when any of them is read, else the
    // parent's still describes them.
    let mut catalog = None;
    let mut catalog_report = None;
    // The views the walk reads the parent through, to report what they fetched.
    let mut catalog_views = Vec::new();
    let walking = if opts.catalog && to_read.iter().any(|&i| i < n_disks) {
        let t = Instant::now();
        // A disk read through a change map is walked through the same map: the parent's
        // chunks where it did not change, so its metadata is not read from the source.
        let devs: Vec<(String, Arc<dyn BlockRead>)> = sources[..n_disks]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let dev: Arc<dyn BlockRead> = match incremental.iter().find(|x| x.0 == i) {
                    Some((_, map, pd)) => {
                        let view = Arc::new(crate::snapshot::view::DiskView::new(
                            store.clone(),
                            pd.clone(),
                        ));
                        catalog_views.push(view.clone());
                        Arc::new(crate::blockdev::Overlay::new(
                            view,
                            s.image.clone(),
                            map.ranges.clone(),
                        ))
                    }
                    None => s.image.clone(),
                };
                (s.name.to_string(), dev)
            })
            .collect();
        // Walked beside the changed-block re-chunking below (the second core is idle
        // there); a whole-disk read waits for it, as its pipeline keeps both cores busy.
        Some(std::thread::spawn(move || {
            let built = crate::files::catalog::build_guarded(&devs);
            (built, t.elapsed().as_secs_f64())
        }))
    } else {
        if opts.catalog {
            catalog = parent.as_ref().and_then(|p| p.1.catalog.clone());
        }
        None
    };

    // Progress counts allocated bytes: holes cost nothing, so they must not weigh in the
    // estimate either.
    let mut total = 0;
    for &i in &full {
        total += allocated_bytes(sources[i].image.as_ref(), span)?;
    }
    total += incremental.iter().map(|(_, m, _)| m.bytes()).sum::<u64>();
    let bar = crate::progress::bytes_bar(total, "backup", opts.quiet);
    // Capping's budget: a share of the bytes read and chunked. On a changed-block night
    // that is the changed bytes, not the segments they touch: scattered writes touch
    // nearly every segment, and 5 % of those a night grew the repository by a fifth over
    // 20 nights for little (BENCHMARKS.md H).
    let budget = (total as f64 * opts.rewrite_budget.clamp(0.0, 1.0)) as u64;
    let mut session = Session::new(repo, &cache, &avoid, budget);
    let mut inc_tables: Vec<(
        usize,
        Vec<Option<crate::Id>>,
        ChangedBlocks,
        snapshot::ChangeRecord,
    )> = Vec::new();
    for (i, map, pd) in &incremental {
        let view = crate::snapshot::view::DiskView::new(store.clone(), pd.clone());
        let (tables, st) = rechunk::disk(
            &session.shared,
            &mut session.w,
            &sources[*i],
            pd,
            &view,
            map,
            &|n| bar.inc(n),
        )?;
        session.w.bytes_read += st.read;
        let record = snapshot::ChangeRecord {
            kind: map.kind.into(),
            id: map.id.clone(),
            parent: parent.as_ref().map(|p| p.0).unwrap_or_default(),
            changed: map.bytes(),
        };
        let cb = ChangedBlocks {
            map: map.kind,
            id: map.id.clone(),
            changed: map.bytes(),
            bytes_read: st.read,
            bytes_skipped: st.skipped,
            bytes_from_parent: view.fetched(),
        };
        inc_tables.push((*i, tables, cb, record));
    }
    if let Some(h) = walking {
        let (built, secs) = h.join().unwrap_or_else(|_| {
            let e = "the catalog walk stopped unexpectedly".to_string();
            (Err(e), 0.0)
        });
        match built {
            // No filesystem cairn reads: nothing to find, nothing to store.
            Ok(c) if c.volumes.is_empty() => {}
            Ok(c) => {
                let bytes = c.encode();
                bar.inc_length(bytes.len() as u64);
                catalog_report = Some(CatalogReport {
                    volumes: c.volumes.len(),
                    entries: c.volumes.iter().map(|v| v.entries.len()).sum(),
                    bytes: bytes.len() as u64,
                    secs,
                    bytes_from_parent: catalog_views.iter().map(|v| v.fetched()).sum(),
                    errors: c.volumes.iter().filter_map(|v| v.error.clone()).collect(),
                });
                sources.push(Item {
                    name: crate::snapshot::Name::new("catalog"),
                    path: PathBuf::from("(file catalog)"),
                    format: crate::files::catalog::CATALOG_FORMAT,
                    image: Arc::new(InMemory(bytes)),
                    config_ref: None,
                    format_source: None,
                });
                to_read.push(sources.len() - 1);
                full.push(sources.len() - 1);
                disks.push(None);
            }
            Err(e) => warnings.push(format!(
                "no file catalog for this snapshot ({e}); `find` walks its filesystems instead"
            )),
        }
    }
    let catalog_slot = catalog_report.as_ref().map(|_| sources.len() - 1);
    let read_sources: Vec<&Item> = full.iter().map(|&i| &sources[i]).collect();
    let guides = {
        let reader = cache.reader()?;
        let mut g = Vec::with_capacity(full.len());
        for &i in &full {
            g.push(guide(
                repo,
                parent.as_ref(),
                &sources[i],
                i < n_disks,
                opts,
                &reader,
                &avoid,
            )?);
        }
        g
    };
    let tables = session.run_pipeline(&read_sources, &guides, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let Session { shared, mut w } = session;
    let rewritten = shared
        .capping
        .rewritten
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(written) = w.packer.finish()? {
        shared.indexed(&written)?;
    }
    let (bytes_stored, packs_written) = (w.packer.bytes_stored, w.packer.packs_written);
    let mut full_tables: std::collections::HashMap<usize, Vec<Option<crate::Id>>> =
        full.iter().copied().zip(tables).collect();
    let mut missed = Vec::new();
    let mut changed_blocks: std::collections::HashMap<usize, ChangedBlocks> = Default::default();
    let mut change_records: std::collections::HashMap<usize, snapshot::ChangeRecord> =
        Default::default();
    for (i, tables, cb, record) in inc_tables {
        changed_blocks.insert(i, cb);
        match full_tables.get(&i) {
            // --verify-changed: the full read is what is stored; any difference is a change
            // the map missed.
            Some(f) => {
                for (slot, (a, b)) in tables.iter().zip(f).enumerate() {
                    if a != b {
                        missed.push(format!(
                            "{}: bytes {}..{}",
                            sources[i].name,
                            slot as u64 * span,
                            ((slot as u64 + 1) * span).min(sources[i].image.size())
                        ));
                    }
                }
            }
            None => {
                full_tables.insert(i, tables);
            }
        }
        change_records.insert(i, record);
    }
    for &i in &to_read {
        let tables = full_tables.remove(&i).unwrap_or_default();
        let src = &sources[i];
        if let Some(stamp) = src.image.stamp() {
            let now = std::fs::metadata(&src.path).map(|m| m.len()).unwrap_or(0);
            if now != stamp.size {
                let how = if now < stamp.size { "shrank" } else { "grew" };
                return Err(Error::Other(format!(
                    "disk image {} {how} while being read ({} → {now} bytes); back up from a \
                     frozen snapshot. Nothing was committed",
                    src.path.display(),
                    stamp.size
                )));
            }
        }
        disks[i] = Some(Disk {
            name: src.name.clone(),
            format: src.format.into(),
            size: src.image.size(),
            table_span: span,
            tables,
            stamp: src.image.stamp(),
            config_ref: src.config_ref.clone(),
            lost: Vec::new(),
            layers: layer_records(src.image.as_ref()),
            change: if opts.changes.verify {
                None
            } else {
                change_records.get(&i).cloned()
            },
        });
    }
    lock.check()?;
    let mut items = disks
        .into_iter()
        .map(|d| d.expect("every item was read or reused"));
    let disks: Vec<Disk> = items.by_ref().take(n_disks).collect();
    let mut files: Vec<Disk> = items.collect();
    if catalog_slot.is_some() {
        catalog = files.pop();
    }

    let summary = Summary {
        // The catalog is written, not read from a source.
        bytes_read: w.bytes_read - catalog_report.as_ref().map_or(0, |c| c.bytes),
        bytes_new: w.bytes_new.saturating_sub(rewritten),
        bytes_stored,
        holes: w.holes,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let snap = Snapshot {
        version: MANIFEST_VERSION,
        vm: opts.vm.clone(),
        time: opts.time.clone(),
        host: opts.host.clone(),
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|p| p.0),
        disks,
        summary: summary.clone(),
        files,
        catalog,
    };
    let id = snapshot::save(repo, &snap)?;
    // Every chunk of these tables is now in an index file: a later backup may reuse them
    // without reading them again.
    cache.mark_complete(snap.items().flat_map(|d| d.tables.iter().flatten()))?;
    cache.flush()?;
    let items = sources
        .iter()
        .take(catalog_slot.unwrap_or(sources.len()))
        .zip(&snap_unchanged(&to_read, sources.len()))
        .enumerate()
        .map(|(i, (src, &unchanged))| {
            let me = std::fs::canonicalize(&src.path).unwrap_or_else(|_| src.path.clone());
            ItemReport {
                name: src.name.clone(),
                path: src.path.clone(),
                format: src.format,
                format_source: src.format_source,
                follows: src
                    .image
                    .files()
                    .into_iter()
                    .filter(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()) != me)
                    .collect(),
                unchanged,
                changed_blocks: changed_blocks.get(&i).cloned(),
            }
        })
        .collect();
    if !missed.is_empty() {
        return Err(Error::Other(format!(
            "--verify-changed: the change map missed changes in {}. Snapshot {} was written \
             from a full read and is complete; do not trust this map source until the cause \
             is known (a reset CBT, a bitmap not in step with the last backup)",
            missed.join(", "),
            id.short()
        )));
    }
    Ok(BackupReport {
        snapshot: id.to_hex(),
        vm: snap.vm.clone(),
        time: snap.time.clone(),
        parent: snap.parent.map(|p| p.to_hex()),
        disks: snap.disks.len(),
        files: snap.files.len(),
        skipped,
        warnings,
        items,
        catalog: catalog_report,
        disks_unchanged,
        logical_bytes: snap.logical_size(),
        bytes_read: summary.bytes_read,
        bytes_new: summary.bytes_new,
        bytes_stored: summary.bytes_stored,
        bytes_rewritten: rewritten,
        holes_skipped: summary.holes,
        bytes_followed: w.bytes_followed,
        packs_written,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// What the file catalog of a backup holds and cost.
#[derive(Debug, serde::Serialize)]
pub struct CatalogReport {
    pub volumes: usize,
    pub entries: usize,
    /// Encoded size, before chunking and compression.
    pub bytes: u64,
    /// Time spent walking the filesystems.
    pub secs: f64,
    /// Stored bytes of the parent's chunks the walk fetched from the repository: a disk
    /// read through a change map is walked through the parent where it did not change.
    /// A chunk is counted once, by whichever of the walk and the re-chunking fetched it.
    pub bytes_from_parent: u64,
    /// Volumes whose walk stopped early, and why.
    pub errors: Vec<String>,
}

/// Bytes held in memory presented as a source (the file catalog).
struct InMemory(Vec<u8>);

impl BlockRead for InMemory {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        crate::blockdev::MemDisk::read_slice(&self.0, offset, buf)
    }
}

impl crate::image::DiskImage for InMemory {
    fn format(&self) -> &'static str {
        crate::files::catalog::CATALOG_FORMAT
    }

    fn stamp(&self) -> Option<crate::image::SourceStamp> {
        None
    }

    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The chain layers of a source, as the manifest records them.
fn layer_records(img: &dyn crate::image::DiskImage) -> Vec<crate::snapshot::LayerRecord> {
    img.layers()
        .into_iter()
        .map(|l| crate::snapshot::LayerRecord {
            name: l
                .files
                .first()
                .and_then(|f| f.file_name())
                .map(crate::snapshot::Name::from_os)
                .unwrap_or_default(),
            stamp: l.stamp,
        })
        .collect()
}

/// Per source: true if it was not read (reused from the parent).
fn snap_unchanged(to_read: &[usize], n: usize) -> Vec<bool> {
    let mut v = vec![true; n];
    to_read.iter().for_each(|&i| v[i] = false);
    v
}

/// The allocated bytes of an image, window by window (metadata only).
fn allocated_bytes(img: &dyn crate::image::DiskImage, span: u64) -> Result<u64> {
    let window = span.min(WINDOW);
    let (size, mut off, mut total) = (img.size(), 0u64, 0u64);
    while off < size {
        let end = (off + window).min(size);
        total += img
            .allocated(off..end)?
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>();
        off = end;
    }
    Ok(total)
}

/// The parent's record of this disk, if the source file is provably unchanged and the
/// parent's disk is `usable`.
fn unchanged_disk(
    repo: &Repository,
    parent: Option<&Snapshot>,
    src: &Item,
    span: u64,
    reader: &crate::repo::cache::CacheReader,
    avoid: &HashSet<crate::Id>,
) -> Result<Option<Disk>> {
    let (Some(parent), Some(stamp)) = (parent, src.image.stamp()) else {
        return Ok(None);
    };
    let Some(d) = parent.items().find(|d| d.name == src.name) else {
        return Ok(None);
    };
    if d.stamp != Some(stamp) || d.table_span != span || d.format != src.format {
        return Ok(None);
    }
    Ok(usable(repo, reader, d, avoid)?.then(|| d.clone()))
}

/// The parent's record of a disk that is read whole, whose pieces the reader may follow
/// where the bytes did not change (pipeline::Shared::follow). Not with `--force-read`,
/// which trusts nothing of the parent (it is how a full chunking is compared with a
/// changed-block one), not under cut rule 1 (pieces depended on the allocation there), not
/// for a disk `repair snapshots` patched (its holes are not the chunker's), and only when
/// the parent's chunks may be referenced (`usable`).
fn guide<'p>(
    repo: &Repository,
    parent: Option<&'p (crate::Id, Snapshot)>,
    src: &Item,
    is_disk: bool,
    opts: &BackupOptions,
    reader: &crate::repo::cache::CacheReader,
    avoid: &HashSet<crate::Id>,
) -> Result<Option<&'p Disk>> {
    let Some((_, parent)) = parent else {
        return Ok(None);
    };
    if opts.force_read || !is_disk || repo.config.chunker.cut_rule < 2 {
        return Ok(None);
    }
    let Some(d) = parent.disks.iter().find(|d| d.name == src.name) else {
        return Ok(None);
    };
    if d.table_span != repo.config.table_span || !d.lost.is_empty() {
        return Ok(None);
    }
    Ok(usable(repo, reader, d, avoid)?.then_some(d))
}

/// True if a new snapshot may reference the parent's tables of disk `d` as they are:
/// every table and chunk is in the index (after `repair packs` dropped a damaged blob,
/// reusing them would make this snapshot unrestorable too, while reading the disk stores
/// the blob again), and none only in a pack a prune recorded as unused (it may be deleted
/// under this backup). Tables found complete once are remembered, while nothing is
/// recorded.
fn usable(
    repo: &Repository,
    reader: &crate::repo::cache::CacheReader,
    d: &Disk,
    avoid: &HashSet<crate::Id>,
) -> Result<bool> {
    let present = |id: &crate::Id| -> Result<bool> {
        Ok(reader.get(id)?.is_some_and(|l| !avoid.contains(&l.pack)))
    };
    for t in d.tables.iter().flatten() {
        if avoid.is_empty() && reader.is_complete(t)? {
            continue;
        }
        if !present(t)? {
            return Ok(false);
        }
        let table = snapshot::load_table(repo, reader, t)?;
        for id in table.extents.iter().filter_map(|e| e.id) {
            if !present(&id)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The default `--time`: now, in the local offset.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// A disk's file name, for messages.
pub fn disk_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
