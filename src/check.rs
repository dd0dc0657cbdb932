//! `check`: is every snapshot restorable?
//!
//! Structure (always): every index file reads and names packs that exist and are long
//! enough; every snapshot reads; its tables and their chunks are in the index. With
//! `--read-data`: every pack is read whole, its name re-hashed, its header opened, and every
//! blob decrypted, decompressed and re-hashed. Each problem names the object and the
//! snapshots that depend on it.

use crate::repo::envelope::FileKind;
use crate::repo::lock::LockKind;
use crate::repo::pack::{pack_name, read_header, verify_pack};
use crate::repo::Repository;
use crate::snapshot::load_table;
use crate::snapshot::Snapshot;
use crate::{Id, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub read_data: bool,
    /// Packs that no index names and no snapshot needs: left by an interrupted backup;
    /// harmless, prune removes them. (One that holds needed blobs is a problem instead.)
    pub unreferenced_packs: usize,
    /// What a restore of each disk must read: how scattered the snapshots are.
    pub fragmentation: Vec<Fragmentation>,
    pub problems: Vec<String>,
}

/// How many packs, reads and bytes a restore of one disk costs, per GiB of its data.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Fragmentation {
    pub snapshot: String,
    pub vm: String,
    pub time: String,
    pub disk: String,
    pub data_bytes: u64,
    /// Distinct packs holding the disk's chunks.
    pub packs: usize,
    /// Range reads a restore issues, and the bytes they cover.
    pub reads: u64,
    pub read_bytes: u64,
    pub packs_per_gib: f64,
    pub reads_per_gib: f64,
    /// Bytes read per byte of data restored (stored, compressed sizes; gaps included).
    pub read_per_data: f64,
}

pub fn run(repo: &Repository, read_data: bool, quiet: bool) -> Result<CheckReport> {
    let _lock = repo.lock(LockKind::Shared, "check")?;
    let mut rep = CheckReport {
        read_data,
        ..Default::default()
    };
    // Backups and prune may run meanwhile. Listed in the reverse of the order in which
    // they are written (packs, index, snapshot), so that whatever a listed snapshot needs
    // is listed too; what a two-phase prune deletes meanwhile is among the packs recorded
    // before, read first.
    let recorded = crate::gc::pending::candidates(repo)?;
    let snapshot_names = repo.snapshot_files()?;
    let index_names = repo.index_files()?;
    let on_disk: HashMap<Id, u64> = repo.list_packs()?;
    rep.packs = on_disk.len();
    // Recorded packs gone since the listings: deleted by prune, a problem only if a
    // snapshot still there needs them (see the end).
    let mut collected: HashSet<Id> = HashSet::new();

    // Index files, read directly (not through the cache) so their damage is seen.
    let mut indexed: HashMap<Id, u64> = HashMap::new(); // pack → end of its last blob
    let mut pack_blobs: HashMap<Id, usize> = HashMap::new();
    rep.index_files = index_names.len();
    for name in &index_names {
        match repo.read_index(name) {
            Ok(idx) => {
                for p in &idx.packs {
                    let end = p
                        .entries
                        .iter()
                        .map(|e| e.offset as u64 + e.length as u64)
                        .max()
                        .unwrap_or(0);
                    let m = indexed.entry(p.pack).or_default();
                    *m = (*m).max(end);
                    // A pack's entries come in one piece per index file; after an
                    // interrupted prune two index files may name the same pack.
                    let n = pack_blobs.entry(p.pack).or_default();
                    *n = (*n).max(p.entries.len());
                    match on_disk.get(&p.pack) {
                        None if recorded.contains(&p.pack) => {
                            collected.insert(p.pack);
                        }
                        None => rep.problems.push(format!(
                            "pack {} is missing (named by {name})",
                            pack_name(&p.pack)
                        )),
                        Some(&size) if size < end + 4 => rep.problems.push(format!(
                            "pack {} is truncated: {size} bytes, but its blobs reach byte {end}",
                            pack_name(&p.pack)
                        )),
                        _ => {}
                    }
                }
            }
            // Rewritten by a prune since the listing.
            Err(e) if e.is_not_found() => {}
            Err(e) => rep
                .problems
                .push(format!("index file {name} cannot be read: {e}")),
        }
    }
    let orphans: Vec<Id> = on_disk
        .keys()
        .filter(|p| !indexed.contains_key(p))
        .copied()
        .collect();
    rep.blobs = pack_blobs.values().sum();

    // Snapshots, their tables and chunks; remember which packs each snapshot needs.
    let cache = repo.index_cache()?;
    let reader = cache.reader()?;
    let mut needs: BTreeMap<String, HashSet<Id>> = BTreeMap::new();
    // Blobs some snapshot needs that no index names, with the snapshots needing them.
    let mut missing: HashMap<Id, String> = HashMap::new();
    let mut label_names: HashMap<String, String> = HashMap::new();
    for name in snapshot_names {
        let snap = match repo
            .read_file(FileKind::Snapshot, &name)
            .and_then(|b| Snapshot::decode(&b, &name))
        {
            Ok(s) => s,
            // Forgotten since the listing.
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                rep.problems
                    .push(format!("snapshot {name} cannot be read: {e}"));
                continue;
            }
        };
        rep.snapshots += 1;
        let label = format!(
            "snapshot {} (VM {}, {})",
            short_of(&name),
            snap.vm,
            snap.time
        );
        label_names.insert(label.clone(), name.clone());
        let packs = needs.entry(label.clone()).or_default();
        for (di, disk) in snap.items().enumerate() {
            let mut frag = Fragmentation {
                snapshot: short_of(&name),
                vm: snap.vm.clone(),
                time: snap.time.clone(),
                disk: disk.name.to_string(),
                ..Default::default()
            };
            let mut disk_packs: HashSet<Id> = HashSet::new();
            for tid in disk.tables.iter().flatten() {
                let table = match reader.get(tid)? {
                    None => {
                        rep.problems.push(format!(
                            "{label}, disk {}: chunk table {} is not in the index",
                            disk.name,
                            tid.short()
                        ));
                        missing.insert(*tid, label.clone());
                        continue;
                    }
                    Some(loc) => {
                        packs.insert(loc.pack);
                        match load_table(repo, &reader, tid) {
                            Ok(t) => t,
                            Err(e) => {
                                rep.problems
                                    .push(format!("{label}, disk {}: {e}", disk.name));
                                continue;
                            }
                        }
                    }
                };
                let mut n_missing = 0usize;
                let mut locs = Vec::new();
                for e in &table.extents {
                    let Some(cid) = e.id else { continue };
                    frag.data_bytes += e.len as u64;
                    match reader.get(&cid)? {
                        Some(loc) => {
                            packs.insert(loc.pack);
                            disk_packs.insert(loc.pack);
                            locs.push(loc);
                        }
                        None => {
                            n_missing += 1;
                            missing.insert(cid, label.clone());
                        }
                    }
                }
                if n_missing > 0 {
                    rep.problems.push(format!(
                        "{label}, disk {}: {n_missing} chunks of table {} are not in the index",
                        disk.name,
                        tid.short()
                    ));
                }
                let (reads, bytes) = crate::restore::read_cost(locs);
                frag.reads += reads;
                frag.read_bytes += bytes;
            }
            // Disks only: config files and the catalog are a few KiB.
            if di < snap.disks.len() && frag.data_bytes > 0 {
                let gib = frag.data_bytes as f64 / (1u64 << 30) as f64;
                frag.packs = disk_packs.len();
                frag.packs_per_gib = frag.packs as f64 / gib;
                frag.reads_per_gib = frag.reads as f64 / gib;
                frag.read_per_data = frag.read_bytes as f64 / frag.data_bytes as f64;
                rep.fragmentation.push(frag);
            }
        }
    }

    // A pack no index names is garbage only if no snapshot needs what it holds: after an
    // index file is lost, the packs it named look exactly like an interrupted backup's.
    for pack in &orphans {
        let size = on_disk.get(pack).copied().unwrap_or(0);
        match read_header(&*repo.backend, &repo.keys, pack, size) {
            Ok(c) => {
                let needed: Vec<&String> = c
                    .entries
                    .iter()
                    .filter_map(|e| missing.get(&e.id))
                    .collect();
                if needed.is_empty() {
                    rep.unreferenced_packs += 1;
                } else {
                    rep.problems.push(format!(
                        "pack {} is named by no index file but holds {} blobs that {} needs; \
                         run `cairn repair index` (prune would otherwise delete it)",
                        pack_name(pack),
                        needed.len(),
                        needed[0]
                    ));
                }
            }
            Err(e) if missing.is_empty() => {
                let _ = e;
                rep.unreferenced_packs += 1;
            }
            Err(e) => rep.problems.push(format!(
                "pack {} is named by no index file and its header cannot be read ({e}); \
                 snapshots need blobs the index lacks, so it may hold them",
                pack_name(pack)
            )),
        }
    }

    let gone_late: Mutex<Vec<Id>> = Mutex::new(Vec::new());
    if read_data {
        let bar = crate::progress::bytes_bar(on_disk.values().sum(), "read", quiet);
        let damaged: Mutex<Vec<(Id, String)>> = Mutex::new(Vec::new());
        let packs: Vec<Id> = indexed
            .keys()
            .filter(|p| on_disk.contains_key(p))
            .copied()
            .collect();
        packs.par_iter().with_max_len(1).for_each(|pack| {
            let r = verify_pack(repo, pack, pack_blobs.get(pack).copied().unwrap_or(0));
            match r {
                // A recorded pack deleted by prune meanwhile: judged below, not damage.
                Err(e) if e.is_not_found() && recorded.contains(pack) => {
                    gone_late
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(*pack);
                }
                Err(e) => damaged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((*pack, e.to_string())),
                Ok(()) => {}
            }
            bar.inc(on_disk.get(pack).copied().unwrap_or(0));
        });
        bar.finish_and_clear();
        let mut damaged = damaged.into_inner().unwrap_or_else(|e| e.into_inner());
        damaged.sort();
        for (pack, err) in damaged {
            let users: Vec<&str> = needs
                .iter()
                .filter(|(_, p)| p.contains(&pack))
                .map(|(l, _)| l.as_str())
                .collect();
            let users = if users.is_empty() {
                "no snapshot uses it".to_string()
            } else {
                format!("needed by {}", users.join("; "))
            };
            rep.problems.push(format!("{err} ({users})"));
        }
    }
    collected.extend(gone_late.into_inner().unwrap_or_else(|e| e.into_inner()));
    // A recorded pack that prune deleted while this ran must be needed by no snapshot that
    // is still there (one forgotten meanwhile may have needed it).
    if !collected.is_empty() {
        let now: HashSet<String> = repo.snapshot_files()?.into_iter().collect();
        for (label, packs) in &needs {
            let still = label_names.get(label).is_some_and(|n| now.contains(n));
            if let Some(p) = packs
                .iter()
                .find(|p| collected.contains(*p))
                .filter(|_| still)
            {
                rep.problems.push(format!(
                    "pack {} was deleted by prune, but {label} needs it",
                    pack_name(p)
                ));
            }
        }
    }

    Ok(rep)
}

fn short_of(name: &str) -> String {
    name.rsplit('/')
        .next()
        .unwrap_or(name)
        .chars()
        .take(8)
        .collect()
}
