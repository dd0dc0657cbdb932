//! The local index cache: every index file of the repository merged into one redb database
//! outside the repository (`$CAIRN_CACHE_DIR` or `~/.cache/cairn/<repo id>/index-v3.redb`).
//!
//! Why redb and not a hash map: a repository of tens of TB holds hundreds of millions of
//! blobs; a B-tree on disk with a bounded page cache keeps a backup's memory flat whatever
//! the repository size. The cache is only ever a copy: if it is lost or damaged it is
//! rebuilt from `index/`.
//!
//! Kept up to date incrementally, since on object storage reading every index file again
//! costs a proxy minutes and money: new index files are merged; for index files that
//! vanished (prune rewrote them), the packs no remaining file names are dropped with their
//! blobs. A blob whose cached copy was in such a pack is dropped even if an older copy
//! survives elsewhere: prune deletes only packs whose blobs no snapshot needs, so at worst
//! a backup stores one again.

use super::index::IndexFile;
use super::pack::{BlobKind, PackEntry};
use super::sorted_runs::{Record, SortedRuns};
use crate::backend::Backend;
use crate::error::{Error, IoContext, Result};
use crate::Id;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const BLOBS: TableDefinition<[u8; 32], [u8; 53]> = TableDefinition::new("blobs");
const PACKS: TableDefinition<[u8; 32], [u8; 32]> = TableDefinition::new("packs");
/// Index file name → the packs it names (32 bytes each).
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("index_files");
/// Pack → how many merged index files name it.
const PACK_REFS: TableDefinition<[u8; 32], u32> = TableDefinition::new("pack_refs");
/// Chunk tables known to have every chunk in the index: a backup may reuse them unread.
/// Index files only ever add blobs, so the set stays true until a pack is dropped, which
/// empties it.
const COMPLETE: TableDefinition<[u8; 32], ()> = TableDefinition::new("complete_tables");
/// Blobs that more than one pack holds. `blobs` keeps one copy's place, so when that pack
/// goes (a prune deleted it), the blob is still stored elsewhere: the cache must read the
/// index again to find it, not forget the blob.
const DUPES: TableDefinition<[u8; 32], ()> = TableDefinition::new("duplicated_blobs");

/// Page cache cap: what keeps the cache's memory bounded. At 64 MiB it was a third of an
/// 8 GiB backup's heap, filled by the backup's own new entries (BENCHMARKS.md J).
const CACHE_BYTES: usize = 16 << 20;
/// Index entries merged per cache transaction at most (its decoded index files and dirty
/// pages stay in memory until it commits). A night of 1 M new blobs into a 100 M cache
/// peaked at 155 MiB with 1 Mi, 133 MiB with 512 Ki and 84 MiB with 256 Ki, in the same
/// time (BENCHMARKS.md J).
const MERGE_BATCH: usize = 256 << 10;
/// Blobs sorted in memory at once when the cache is built from scratch (93 bytes each).
const RUN_ENTRIES: usize = 512 << 10;
/// Blobs per transaction of that build; in key order, so its dirty pages are few.
const BUILD_BATCH: usize = 256 << 10;

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    pub pack: Id,
    pub entry: PackEntry,
    /// The `created` time of the index file naming this copy: of two copies, the newer wins.
    pub created: u64,
}

fn encode_loc(pack: &Id, e: &PackEntry, created: u64) -> [u8; 53] {
    let mut v = [0u8; 53];
    v[45..53].copy_from_slice(&created.to_le_bytes());
    v[..32].copy_from_slice(&pack.0);
    v[32] = e.kind as u8;
    v[33..37].copy_from_slice(&e.offset.to_le_bytes());
    v[37..41].copy_from_slice(&e.length.to_le_bytes());
    v[41..45].copy_from_slice(&e.raw_len.to_le_bytes());
    v
}

fn decode_loc(id: Id, v: &[u8; 53]) -> BlobLoc {
    let u = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
    BlobLoc {
        pack: Id(v[..32].try_into().expect("32 bytes")),
        entry: PackEntry {
            kind: BlobKind::from_u8(v[32]).unwrap_or(BlobKind::Data),
            id,
            offset: u(33),
            length: u(37),
            raw_len: u(41),
        },
        created: u64::from_le_bytes(v[45..53].try_into().expect("8 bytes")),
    }
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("local index cache: {e}"))
}

pub struct IndexCache {
    db: redb::Database,
    /// The folder the database is in: where a build from scratch sorts its runs.
    dir: PathBuf,
    /// A private cache made because the shared one was busy; removed on drop.
    private_dir: Option<PathBuf>,
}

impl Drop for IndexCache {
    fn drop(&mut self) {
        if let Some(d) = &self.private_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl IndexCache {
    /// Opens (or creates) the cache in `dir`. If another cairn process holds it, a private
    /// cache is built in a temporary folder instead: slower to start, never wrong.
    pub fn open(dir: &Path) -> Result<IndexCache> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating cache folder {}", dir.display()))?;
        // Version 4 of the cache (duplicated blobs recorded): a new name, so a cache of an
        // old layout is simply not used.
        for old in ["index.redb", "index-v2.redb", "index-v3.redb"] {
            let _ = std::fs::remove_file(dir.join(old));
        }
        let path = dir.join("index-v4.redb");
        match Self::open_db(&path) {
            Ok(db) => Ok(IndexCache {
                db,
                dir: dir.to_path_buf(),
                private_dir: None,
            }),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let private = std::env::temp_dir().join(format!(
                    "cairn-cache-{}",
                    hex::encode(crate::crypto::random_bytes::<8>())
                ));
                std::fs::create_dir_all(&private)
                    .ctx(|| format!("creating {}", private.display()))?;
                let db = Self::open_db(&private.join("index-v4.redb")).map_err(db_err)?;
                Ok(IndexCache {
                    db,
                    dir: private.clone(),
                    private_dir: Some(private),
                })
            }
            Err(_) => {
                // A damaged cache is only a copy: start it afresh.
                let _ = std::fs::remove_file(&path);
                let db = Self::open_db(&path).map_err(db_err)?;
                Ok(IndexCache {
                    db,
                    dir: dir.to_path_buf(),
                    private_dir: None,
                })
            }
        }
    }

    fn open_db(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
    }

    /// Brings the cache in line with the repository's `index/` folder: merges new files,
    /// then forgets vanished ones (dropping the packs nothing names any more). An index
    /// file that is damaged is left out (and tried again next time): the blobs it names are
    /// unavailable until `cairn repair index`, but everything else reads. Returns the files
    /// left out.
    pub fn sync(
        &self,
        backend: &dyn Backend,
        read: &dyn Fn(&str) -> Result<IndexFile>,
    ) -> Result<Vec<(String, Error)>> {
        // A file listed but gone when read was replaced by a prune in between: list again,
        // since its replacement may have come after the listing.
        for _ in 0..10 {
            if let Some(skipped) = self.sync_once(backend, read)? {
                return Ok(skipped);
            }
        }
        Err(Error::Other(
            "the index keeps changing while it is read (index files vanish between listing and reading); try again".into(),
        ))
    }

    /// One pass of `sync`; None if an index file vanished while it ran.
    fn sync_once(
        &self,
        backend: &dyn Backend,
        read: &dyn Fn(&str) -> Result<IndexFile>,
    ) -> Result<Option<Vec<(String, Error)>>> {
        let listed: HashSet<String> = backend
            .list(super::files::Folder::Index.name())?
            .into_iter()
            .map(|l| l.name)
            .collect();
        let merged: HashSet<String> = {
            let tx = self.db.begin_read().map_err(db_err)?;
            match tx.open_table(FILES) {
                Ok(t) => t
                    .iter()
                    .map_err(db_err)?
                    .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                    .collect(),
                Err(redb::TableError::TableDoesNotExist(_)) => HashSet::new(),
                Err(e) => return Err(db_err(e)),
            }
        };
        // New files first: a pack that a rewritten file still names keeps its count.
        // In name order, which is the order copies of equal age are settled in.
        let mut new: Vec<&String> = listed.difference(&merged).collect();
        new.sort();
        let done = if merged.is_empty() {
            self.build(new, read)?
        } else {
            self.merge(new, read)?
        };
        let Some(skipped) = done else {
            return Ok(None);
        };
        let vanished: Vec<&String> = merged.difference(&listed).collect();
        if !vanished.is_empty() && self.forget(&vanished)? {
            // A dropped pack held the copy of a blob that another pack holds too: start
            // afresh, so the next pass merges every file and finds the other copy.
            self.reset()?;
            return Ok(None);
        }
        Ok(Some(skipped))
    }

    /// Empties the cache.
    fn reset(&self) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.delete_table(BLOBS).map_err(db_err)?;
        tx.delete_table(PACKS).map_err(db_err)?;
        tx.delete_table(PACK_REFS).map_err(db_err)?;
        tx.delete_table(COMPLETE).map_err(db_err)?;
        tx.delete_table(DUPES).map_err(db_err)?;
        tx.delete_table(FILES).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Forgets index files that are gone, and the packs (with their blobs) that no merged
    /// file names any more. True if a blob dropped with them has another copy.
    fn forget(&self, names: &[&String]) -> Result<bool> {
        let mut other_copy = false;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut files = tx.open_table(FILES).map_err(db_err)?;
            let mut refs = tx.open_table(PACK_REFS).map_err(db_err)?;
            let mut packs = tx.open_table(PACKS).map_err(db_err)?;
            let mut gone: HashSet<[u8; 32]> = HashSet::new();
            for name in names {
                let named: Vec<[u8; 32]> = match files.remove(name.as_str()).map_err(db_err)? {
                    Some(v) => v
                        .value()
                        .chunks_exact(32)
                        .map(|c| c.try_into().expect("32 bytes"))
                        .collect(),
                    None => continue,
                };
                for p in named {
                    let n = refs.get(p).map_err(db_err)?.map_or(0, |v| v.value());
                    if n <= 1 {
                        refs.remove(p).map_err(db_err)?;
                        packs.remove(p).map_err(db_err)?;
                        gone.insert(p);
                    } else {
                        refs.insert(p, n - 1).map_err(db_err)?;
                    }
                }
            }
            if !gone.is_empty() {
                let mut blobs = tx.open_table(BLOBS).map_err(db_err)?;
                let mut dropped = Vec::new();
                blobs
                    .retain(|k, v| {
                        let keep = !gone.contains(&v[..32]);
                        if !keep {
                            dropped.push(k);
                        }
                        keep
                    })
                    .map_err(db_err)?;
                let dupes = tx.open_table(DUPES).map_err(db_err)?;
                for k in dropped {
                    if dupes.get(k).map_err(db_err)?.is_some() {
                        other_copy = true;
                        break;
                    }
                }
                let mut complete = tx.open_table(COMPLETE).map_err(db_err)?;
                complete.retain(|_, _| false).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(other_copy)
    }

    /// Merges index files (in the order given) into a cache that holds others already.
    fn merge(
        &self,
        names: Vec<&String>,
        read: &dyn Fn(&str) -> Result<IndexFile>,
    ) -> Result<Option<Vec<(String, Error)>>> {
        let mut skipped = Vec::new();
        let mut vanished = false;
        // Many files per transaction: redb cannot reuse the pages a non-durable commit
        // frees, so one commit per file (random keys touch most leaves each time) made
        // the cache grow to ~540 bytes per blob and merge at 50,000 blobs/s.
        let mut batch: Vec<(&String, IndexFile)> = Vec::new();
        let mut entries = 0;
        for name in names {
            match read(name) {
                Ok(idx) => {
                    entries += idx.blob_count();
                    batch.push((name, idx));
                    if entries >= MERGE_BATCH {
                        self.add_batch(&batch)?;
                        batch.clear();
                        entries = 0;
                    }
                }
                Err(e) if e.is_not_found() => vanished = true,
                Err(e @ Error::Corrupt { .. }) => skipped.push((name.clone(), e)),
                Err(e) => return Err(e),
            }
        }
        self.add_batch(&batch)?;
        Ok((!vanished).then_some(skipped))
    }

    /// Fills an empty cache from every index file at once (a new backup host, or a lost
    /// cache). The blobs go through an external sort and into their table in key order,
    /// so each page of the B-tree is written about once; merging in batches rewrites most
    /// pages every batch. The files and packs are recorded last, in one transaction: a
    /// build that stops half-way leaves blobs without files, which the next one clears.
    fn build(
        &self,
        names: Vec<&String>,
        read: &dyn Fn(&str) -> Result<IndexFile>,
    ) -> Result<Option<Vec<(String, Error)>>> {
        self.reset()?;
        let mut runs = SortedRuns::new(&self.dir, RUN_ENTRIES);
        let mut seq = 0u64;
        let mut skipped = Vec::new();
        let mut files: Vec<(&String, Vec<u8>)> = Vec::new();
        let mut packs: HashMap<[u8; 32], ([u8; 32], u32)> = HashMap::new();
        for name in names {
            let idx = match read(name) {
                Ok(idx) => idx,
                // Replaced by a prune since the listing: the caller lists again.
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e @ Error::Corrupt { .. }) => {
                    skipped.push((name.clone(), e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut named = Vec::with_capacity(idx.packs.len() * 32);
            for p in &idx.packs {
                let known = packs.entry(p.pack.0).or_insert((p.salt, 0));
                *known = (p.salt, known.1 + 1);
                named.extend_from_slice(&p.pack.0);
                for e in &p.entries {
                    let value = encode_loc(&p.pack, e, idx.created);
                    runs.push(Record {
                        key: e.id.0,
                        seq,
                        value,
                    })?;
                    seq += 1;
                }
            }
            files.push((name, named));
        }

        let created = |r: &Record| u64::from_le_bytes(r.value[45..53].try_into().expect("8"));
        let mut sorted = runs.merged()?;
        let mut next = sorted.next_record()?;
        while next.is_some() {
            let tx = self.db.begin_write().map_err(db_err)?;
            {
                let mut blobs = tx.open_table(BLOBS).map_err(db_err)?;
                let mut dupes = tx.open_table(DUPES).map_err(db_err)?;
                let mut n = 0;
                while let Some(first) = next.filter(|_| n < BUILD_BATCH) {
                    // The copies of one blob come together, in the order they were read:
                    // the newest wins, and of equally new ones the first (as in `merge`).
                    let mut win = first;
                    let mut dupe = false;
                    next = loop {
                        match sorted.next_record()? {
                            Some(r) if r.key == first.key => {
                                dupe |= r.value[..32] != first.value[..32];
                                if created(&r) > created(&win) {
                                    win = r;
                                }
                            }
                            other => break other,
                        }
                    };
                    blobs.insert(win.key, win.value).map_err(db_err)?;
                    if dupe {
                        dupes.insert(win.key, ()).map_err(db_err)?;
                    }
                    n += 1;
                }
            }
            tx.commit().map_err(db_err)?;
        }

        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut merged = tx.open_table(FILES).map_err(db_err)?;
            let mut pack_table = tx.open_table(PACKS).map_err(db_err)?;
            let mut refs = tx.open_table(PACK_REFS).map_err(db_err)?;
            for (name, named) in &files {
                merged
                    .insert(name.as_str(), named.as_slice())
                    .map_err(db_err)?;
            }
            for (pack, (salt, n)) in &packs {
                pack_table.insert(pack, salt).map_err(db_err)?;
                refs.insert(pack, n).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(Some(skipped))
    }

    fn add_batch(&self, batch: &[(&String, IndexFile)]) -> Result<()> {
        let refs: Vec<(&String, &IndexFile)> = batch.iter().map(|(n, i)| (*n, i)).collect();
        self.add_all(&refs, true)
    }

    /// Records that every chunk of these tables is in the index.
    pub fn mark_complete<'a>(&self, tables: impl Iterator<Item = &'a Id>) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::None).map_err(db_err)?;
        {
            let mut t = tx.open_table(COMPLETE).map_err(db_err)?;
            for id in tables {
                t.insert(id.0, ()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Records a newly written (or newly found) index file.
    pub fn add(&self, name: &str, idx: &IndexFile) -> Result<()> {
        self.add_all(&[(name, idx)], false)
    }

    /// Records index files in one transaction. A backup's own index files are added
    /// without durability (the cache can always be rebuilt; [`IndexCache::flush`] ends the
    /// command durably); a merge's batches are durable, since redb reuses only the pages
    /// that a durable commit freed: without that, ten batches of random keys (each
    /// touching most leaves) left the cache at 326 bytes per blob.
    fn add_all<N: AsRef<str>>(&self, files: &[(N, &IndexFile)], durable: bool) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        if !durable {
            tx.set_durability(redb::Durability::None).map_err(db_err)?;
        }
        {
            let mut blobs = tx.open_table(BLOBS).map_err(db_err)?;
            let mut packs = tx.open_table(PACKS).map_err(db_err)?;
            let mut merged = tx.open_table(FILES).map_err(db_err)?;
            let mut refs = tx.open_table(PACK_REFS).map_err(db_err)?;
            let mut dupes = tx.open_table(DUPES).map_err(db_err)?;
            for (name, idx) in files {
                let name = name.as_ref();
                if merged.get(name).map_err(db_err)?.is_some() {
                    continue; // merged already
                }
                let mut named = Vec::with_capacity(idx.packs.len() * 32);
                let mut locs = Vec::with_capacity(idx.blob_count());
                for p in &idx.packs {
                    packs.insert(p.pack.0, p.salt).map_err(db_err)?;
                    let n = refs.get(p.pack.0).map_err(db_err)?.map_or(0, |v| v.value());
                    refs.insert(p.pack.0, n + 1).map_err(db_err)?;
                    named.extend_from_slice(&p.pack.0);
                    let loc = |e: &PackEntry| (e.id, encode_loc(&p.pack, e, idx.created));
                    locs.extend(p.entries.iter().map(loc));
                }
                // In key order: neighbouring inserts share B-tree pages. Stable, so of two
                // copies in one file the first stays, as in a build from scratch.
                locs.sort_by_key(|(id, _)| id.0);
                for (id, loc) in locs {
                    // A blob stored again later (next to newer data) is read from there; of
                    // two copies equally new, the one merged first stays.
                    let old = blobs.insert(id.0, loc).map_err(db_err)?.map(|v| v.value());
                    if old.is_some_and(|o| o[..32] != loc[..32]) {
                        dupes.insert(id.0, ()).map_err(db_err)?;
                    }
                    let kept = old.filter(|old| decode_loc(id, old).created >= idx.created);
                    if let Some(old) = kept {
                        blobs.insert(id.0, old).map_err(db_err)?;
                    }
                }
                merged.insert(name, named.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Forces what was added to disk; called once at the end of a command.
    pub fn flush(&self) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// A consistent read view, cheap to make; one per thread or per batch of lookups.
    pub fn reader(&self) -> Result<CacheReader> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let blobs = match tx.open_table(BLOBS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err(e)),
        };
        let packs = match tx.open_table(PACKS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err(e)),
        };
        let complete = match tx.open_table(COMPLETE) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err(e)),
        };
        Ok(CacheReader {
            blobs,
            packs,
            complete,
        })
    }
}

pub struct CacheReader {
    blobs: Option<redb::ReadOnlyTable<[u8; 32], [u8; 53]>>,
    packs: Option<redb::ReadOnlyTable<[u8; 32], [u8; 32]>>,
    complete: Option<redb::ReadOnlyTable<[u8; 32], ()>>,
}

impl CacheReader {
    pub fn get(&self, id: &Id) -> Result<Option<BlobLoc>> {
        let Some(t) = &self.blobs else {
            return Ok(None);
        };
        Ok(t.get(id.0)
            .map_err(db_err)?
            .map(|v| decode_loc(*id, &v.value())))
    }

    pub fn contains(&self, id: &Id) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    /// True if table `id` was recorded as having every chunk in the index.
    pub fn is_complete(&self, id: &Id) -> Result<bool> {
        let Some(t) = &self.complete else {
            return Ok(false);
        };
        Ok(t.get(id.0).map_err(db_err)?.is_some())
    }

    /// The sealing salt of a pack, as its index entry recorded it.
    pub fn pack_salt(&self, pack: &Id) -> Result<Option<[u8; 32]>> {
        let Some(t) = &self.packs else {
            return Ok(None);
        };
        Ok(t.get(pack.0).map_err(db_err)?.map(|v| v.value()))
    }

    /// Every blob, in id order (for check).
    pub fn for_each(&self, mut f: impl FnMut(BlobLoc) -> Result<()>) -> Result<()> {
        let Some(t) = &self.blobs else { return Ok(()) };
        for r in t.iter().map_err(db_err)? {
            let (k, v) = r.map_err(db_err)?;
            f(decode_loc(Id(k.value()), &v.value()))?;
        }
        Ok(())
    }

    /// Every pack the index knows.
    pub fn packs(&self) -> Result<Vec<Id>> {
        let Some(t) = &self.packs else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for r in t.iter().map_err(db_err)? {
            out.push(Id(r.map_err(db_err)?.0.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::repo::index::IndexPack;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn pack(p: u8, blobs: &[u8]) -> IndexPack {
        IndexPack {
            pack: Id([p; 32]),
            salt: [0; 32],
            entries: blobs
                .iter()
                .map(|b| PackEntry {
                    kind: BlobKind::Data,
                    id: Id([*b; 32]),
                    offset: 0,
                    length: 1,
                    raw_len: 1,
                })
                .collect(),
        }
    }

    /// A blob named by two index files is read from the newer one's pack, in whichever
    /// order (and in however many transactions) the files are merged.
    #[test]
    fn the_newest_copy_of_a_blob_wins_in_any_merge_order() {
        for order in [[0usize, 1], [1, 0]] {
            let dir = tempfile::tempdir().unwrap();
            let cache = IndexCache::open(dir.path()).unwrap();
            let files = [
                (
                    "index/a",
                    IndexFile {
                        packs: vec![pack(1, &[9, 8])],
                        created: 5,
                    },
                ),
                (
                    "index/b",
                    IndexFile {
                        packs: vec![pack(2, &[9])],
                        created: 7,
                    },
                ),
            ];
            let [first, second] = order;
            cache
                .add_all(&[(files[first].0, &files[first].1)], true)
                .unwrap();
            cache.add(files[second].0, &files[second].1).unwrap();
            let r = cache.reader().unwrap();
            assert_eq!(r.get(&Id([9; 32])).unwrap().unwrap().pack, Id([2; 32]));
            assert_eq!(r.get(&Id([8; 32])).unwrap().unwrap().pack, Id([1; 32]));
        }
    }

    /// After prune rewrote one index file, only the new file is read; the pack it no
    /// longer names is dropped with its blobs, the others stay.
    #[test]
    fn sync_reads_only_new_files_and_drops_packs_nothing_names() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("repo"));
        let cache = IndexCache::open(&dir.path().join("cache")).unwrap();
        let files: RefCell<HashMap<String, IndexFile>> = RefCell::default();
        let reads = RefCell::new(Vec::new());
        let put = |name: &str, packs: Vec<IndexPack>| {
            backend.put(name, b"x").unwrap();
            let idx = IndexFile { packs, created: 1 };
            files.borrow_mut().insert(name.to_string(), idx);
        };
        let read = |name: &str| -> Result<IndexFile> {
            reads.borrow_mut().push(name.to_string());
            Ok(files.borrow()[name].clone())
        };
        put("index/a", vec![pack(1, &[10, 11]), pack(2, &[20])]);
        put("index/b", vec![pack(3, &[30])]);
        cache.sync(&backend, &read).unwrap();
        assert_eq!(reads.borrow().len(), 2);
        // prune: index/a is rewritten without pack 1.
        put("index/c", vec![pack(2, &[20])]);
        backend.delete("index/a").unwrap();
        reads.borrow_mut().clear();
        cache.sync(&backend, &read).unwrap();
        assert_eq!(*reads.borrow(), vec!["index/c".to_string()]);
        let r = cache.reader().unwrap();
        assert!(r.get(&Id([10; 32])).unwrap().is_none());
        assert!(r.get(&Id([11; 32])).unwrap().is_none());
        assert_eq!(r.get(&Id([20; 32])).unwrap().unwrap().pack, Id([2; 32]));
        assert!(r.get(&Id([30; 32])).unwrap().is_some());
        let mut packs = r.packs().unwrap();
        packs.sort();
        assert_eq!(packs, vec![Id([2; 32]), Id([3; 32])]);
        // Nothing changed: nothing is read.
        reads.borrow_mut().clear();
        cache.sync(&backend, &read).unwrap();
        assert!(reads.borrow().is_empty());
    }

    /// A cache built from scratch (sorted runs, key order) holds what merging the same
    /// files one by one holds: the same copy of every blob, the same packs and reference
    /// counts, the same duplicated blobs.
    #[test]
    fn a_cache_built_from_scratch_equals_one_merged_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("repo"));
        let mut files: HashMap<String, IndexFile> = HashMap::new();
        let mut x = 7u32;
        for f in 0..24u8 {
            let mut packs = Vec::new();
            for p in 0..3u8 {
                let blobs: Vec<u8> = (0..20)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (x >> 16) as u8 % 90
                    })
                    .collect();
                // Packs shared between files too, as two rewritten index files name one.
                packs.push(pack((f * 3 + p) % 50, &blobs));
            }
            let name = format!("index/{f:02}");
            backend.put(&name, b"x").unwrap();
            let created = u64::from(f % 4);
            files.insert(name, IndexFile { packs, created });
        }
        let read = |name: &str| -> Result<IndexFile> { Ok(files[name].clone()) };
        let built = IndexCache::open(&dir.path().join("built")).unwrap();
        assert!(built.sync(&backend, &read).unwrap().is_empty());
        let merged = IndexCache::open(&dir.path().join("merged")).unwrap();
        let mut names: Vec<&String> = files.keys().collect();
        names.sort();
        for n in names {
            merged.add_all(&[(n.as_str(), &files[n])], true).unwrap();
        }
        let dump = |c: &IndexCache| {
            let r = c.reader().unwrap();
            let mut blobs = Vec::new();
            r.for_each(|b| {
                blobs.push(b);
                Ok(())
            })
            .unwrap();
            let tx = c.db.begin_read().unwrap();
            let refs: Vec<([u8; 32], u32)> = tx
                .open_table(PACK_REFS)
                .unwrap()
                .iter()
                .unwrap()
                .map(|r| r.map(|(k, v)| (k.value(), v.value())).unwrap())
                .collect();
            let dupes: Vec<[u8; 32]> = tx
                .open_table(DUPES)
                .unwrap()
                .iter()
                .unwrap()
                .map(|r| r.map(|(k, _)| k.value()).unwrap())
                .collect();
            (blobs, r.packs().unwrap(), refs, dupes)
        };
        let (a, b) = (dump(&built), dump(&merged));
        assert_eq!(a.0.len(), 90, "every blob id occurs");
        assert!(!a.3.is_empty(), "the test has duplicated blobs");
        assert_eq!(a.1, b.1, "packs");
        assert_eq!(a.2, b.2, "pack references");
        assert_eq!(a.3, b.3, "duplicated blobs");
        for (x, y) in a.0.iter().zip(&b.0) {
            assert_eq!(x, y, "copy of a blob");
        }
        assert_eq!(a.0.len(), b.0.len());
    }

    /// Two proxies stored the same blob; a prune deleted the pack whose copy the cache
    /// kept (the newer one). The blob is still found, in the other pack.
    #[test]
    fn a_blob_whose_kept_copy_is_pruned_is_found_in_its_other_copy() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("repo"));
        let cache = IndexCache::open(&dir.path().join("cache")).unwrap();
        let files: RefCell<HashMap<String, IndexFile>> = RefCell::default();
        let put = |name: &str, packs: Vec<IndexPack>, created: u64| {
            backend.put(name, b"x").unwrap();
            files
                .borrow_mut()
                .insert(name.to_string(), IndexFile { packs, created });
        };
        let read = |name: &str| -> Result<IndexFile> { Ok(files.borrow()[name].clone()) };
        put("index/a", vec![pack(1, &[9, 8])], 5);
        put("index/b", vec![pack(2, &[9, 7])], 7);
        cache.sync(&backend, &read).unwrap();
        assert_eq!(
            cache
                .reader()
                .unwrap()
                .get(&Id([9; 32]))
                .unwrap()
                .unwrap()
                .pack,
            Id([2; 32])
        );
        backend.delete("index/b").unwrap();
        cache.sync(&backend, &read).unwrap();
        let r = cache.reader().unwrap();
        assert_eq!(r.get(&Id([9; 32])).unwrap().unwrap().pack, Id([1; 32]));
        assert!(r.get(&Id([7; 32])).unwrap().is_none());
        assert!(r.get(&Id([8; 32])).unwrap().is_some());
    }
}
