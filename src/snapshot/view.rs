//! A snapshot's disk as a random-access [`BlockRead`]: an offset maps to a chunk table (one
//! per span), to the extent holding it, to a chunk, to a blob in a pack. Only the chunks a
//! read touches are fetched; chunks of one read that lie next to each other in one pack are
//! fetched with one range read; decompressed chunks stay in a bounded cache shared by all
//! views of a command, so the filesystem readers' many small reads of the same metadata
//! blocks cost one fetch. File-level restore, the FUSE mount and the NBD export read disks
//! through it.

use super::{ChunkTable, Disk};
use crate::blockdev::{fits, past_end, BlockRead};
use crate::crypto::Sealer;
use crate::repo::blobs::{locate, pack_sealer};
use crate::repo::cache::{BlobLoc, IndexCache};
use crate::repo::pack::{blob_in, open_blob, pack_name, read_span, BlobKind};
use crate::repo::Repository;
use crate::{Error, Id, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Chunks of one read that lie at most this far apart in a pack are fetched together.
const MAX_GAP: u64 = 256 << 10;
/// Largest single range read.
const MAX_READ: u64 = 8 << 20;
/// Tables kept decoded per view (a 1 GiB span's table is about 1.2 MiB).
const TABLES_KEPT: usize = 16;

/// What a command's views share: the repository, its index, and the chunk cache.
pub struct Store {
    pub repo: Arc<Repository>,
    pub cache: Arc<IndexCache>,
    chunks: Mutex<Lru<Id, Arc<Vec<u8>>>>,
    sealers: Mutex<HashMap<Id, Sealer>>,
    /// Bytes fetched from the repository (stored sizes), for reports and benchmarks.
    pub fetched: AtomicU64,
    /// Range reads issued.
    pub requests: AtomicU64,
}

impl Store {
    /// A store whose chunk cache holds at most `cache_bytes` of decompressed chunks.
    pub fn new(repo: Arc<Repository>, cache: Arc<IndexCache>, cache_bytes: u64) -> Arc<Store> {
        Arc::new(Store {
            repo,
            cache,
            chunks: Mutex::new(Lru::new(cache_bytes)),
            sealers: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    fn sealer(&self, reader: &crate::repo::cache::CacheReader, pack: &Id) -> Result<Sealer> {
        let mut m = self.sealers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(pack) {
            return Ok(s.clone());
        }
        let s = pack_sealer(&self.repo, reader, pack)?;
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(*pack, s.clone());
        Ok(s)
    }

    /// The chunks `ids` (in read order), from the cache or fetched, neighbours in a pack
    /// together. Stored bytes fetched are added to `fetched` too.
    fn chunks(&self, ids: &[Id], fetched: &AtomicU64) -> Result<HashMap<Id, Arc<Vec<u8>>>> {
        let mut out = HashMap::new();
        let mut missing: Vec<Id> = Vec::new();
        {
            let mut c = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                if out.contains_key(id) || missing.contains(id) {
                    continue;
                }
                match c.get(id) {
                    Some(v) => {
                        out.insert(*id, v);
                    }
                    None => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let reader = self.cache.reader()?;
        let mut locs: Vec<BlobLoc> = Vec::with_capacity(missing.len());
        for id in &missing {
            locs.push(locate(&reader, id)?);
        }
        locs.sort_by_key(|l| (l.pack, l.entry.offset));
        let mut i = 0;
        while i < locs.len() {
            let first = locs[i];
            let j = read_end(&locs, i);
            let (start, len) = read_span(locs[i..j].iter().map(|l| &l.entry));
            let bytes = self
                .repo
                .backend
                .get_range(&pack_name(&first.pack), start, len)?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.fetched.fetch_add(len as u64, Ordering::Relaxed);
            fetched.fetch_add(len as u64, Ordering::Relaxed);
            let sealer = self.sealer(&reader, &first.pack)?;
            // Opened (decrypted, decompressed, verified) before the cache is locked, so
            // threads reading through one store decode side by side.
            let mut opened = Vec::with_capacity(j - i);
            for l in &locs[i..j] {
                let stored = blob_in(&bytes, start, &l.entry, &l.pack)?;
                if l.entry.kind != BlobKind::Data {
                    return Err(Error::corrupt(
                        format!("blob {}", l.entry.id.short()),
                        "a chunk table names it as data, the index as a table",
                    ));
                }
                let plain = Arc::new(open_blob(
                    &self.repo.keys,
                    &sealer,
                    &l.entry,
                    stored,
                    &l.pack,
                )?);
                opened.push((l.entry.id, plain));
            }
            let mut c = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
            for (id, plain) in opened {
                c.put(id, plain.clone(), plain.len() as u64);
                out.insert(id, plain);
            }
            i = j;
        }
        Ok(out)
    }
}

/// Where the read that starts at `locs[i]` ends (exclusive): the blobs after it in the same
/// pack while the gaps stay within [`MAX_GAP`] and the read within [`MAX_READ`]. `locs` is
/// sorted by pack, then offset. The pack is compared first: the next pack's first blob may
/// lie at a lower offset than this read's start.
fn read_end(locs: &[BlobLoc], i: usize) -> usize {
    let first = &locs[i];
    let mut j = i + 1;
    while j < locs.len() && locs[j].pack == first.pack {
        let (prev, cur) = (&locs[j - 1].entry, &locs[j].entry);
        let gap = (cur.offset as u64).saturating_sub(prev.offset as u64 + prev.length as u64);
        let span =
            (cur.offset as u64 + cur.length as u64).saturating_sub(first.entry.offset as u64);
        if gap > MAX_GAP || span > MAX_READ {
            break;
        }
        j += 1;
    }
    j
}

/// A decoded table with each extent's start offset, for binary search.
struct Located {
    table: ChunkTable,
    starts: Vec<u64>,
}

/// One disk of a snapshot, readable at any offset.
pub struct DiskView {
    store: Arc<Store>,
    disk: Disk,
    tables: Mutex<Lru<usize, Arc<Located>>>,
    /// Stored bytes this view's reads fetched (the store counts all views').
    fetched: AtomicU64,
}

impl DiskView {
    pub fn new(store: Arc<Store>, disk: Disk) -> DiskView {
        DiskView {
            store,
            disk,
            tables: Mutex::new(Lru::new(TABLES_KEPT as u64)),
            fetched: AtomicU64::new(0),
        }
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Stored bytes of chunks this view fetched from the repository; a chunk another view
    /// of the same store fetched first is not counted.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The table of span `slot`, or None for a span that is all hole.
    fn table(&self, slot: usize) -> Result<Option<Arc<Located>>> {
        let Some(id) = self.disk.tables.get(slot).copied().flatten() else {
            return Ok(None);
        };
        if let Some(t) = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
        {
            return Ok(Some(t));
        }
        let reader = self.store.cache.reader()?;
        let table = super::load_table(&self.store.repo, &reader, &id)?;
        let base = slot as u64 * self.disk.table_span;
        let span = self.disk.table_span.min(self.disk.size - base);
        if table.len() != span {
            return Err(Error::corrupt(
                format!("chunk table {}", id.short()),
                format!("covers {} bytes, expected {span}", table.len()),
            ));
        }
        let mut starts = Vec::with_capacity(table.extents.len());
        let mut off = base;
        for e in &table.extents {
            starts.push(off);
            off += e.len as u64;
        }
        let t = Arc::new(Located { table, starts });
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(slot, t.clone(), 1);
        Ok(Some(t))
    }

    /// The extents (absolute start, length, chunk or hole) overlapping `range`.
    fn pieces(&self, range: Range<u64>) -> Result<Vec<(u64, u64, Option<Id>)>> {
        let mut out = Vec::new();
        let span = self.disk.table_span;
        let mut pos = range.start;
        while pos < range.end {
            let slot = (pos / span) as usize;
            let slot_end = ((slot as u64 + 1) * span).min(self.disk.size);
            match self.table(slot)? {
                None => {
                    let end = slot_end.min(range.end);
                    out.push((pos, end - pos, None));
                    pos = end;
                }
                Some(t) => {
                    let mut i = t.starts.partition_point(|&s| s <= pos).saturating_sub(1);
                    while i < t.starts.len() && t.starts[i] < range.end {
                        let e = t.table.extents[i];
                        out.push((t.starts[i], e.len as u64, e.id));
                        i += 1;
                    }
                    pos = slot_end;
                }
            }
        }
        Ok(out)
    }
}

impl BlockRead for DiskView {
    fn size(&self) -> u64 {
        self.disk.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), self.disk.size) {
            return Err(past_end(
                &self.disk.name.to_string(),
                offset,
                buf.len(),
                self.disk.size,
            ));
        }
        let end = offset + buf.len() as u64;
        let pieces = self.pieces(offset..end)?;
        let ids: Vec<Id> = pieces.iter().filter_map(|p| p.2).collect();
        let chunks = self.store.chunks(&ids, &self.fetched)?;
        for (start, len, id) in pieces {
            let s = start.max(offset);
            let e = (start + len).min(end);
            if s >= e {
                continue;
            }
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match id {
                None => dst.fill(0),
                Some(id) => {
                    let c = &chunks[&id];
                    let from = (s - start) as usize;
                    let src = c.get(from..from + dst.len()).ok_or_else(|| {
                        Error::corrupt(
                            format!("chunk {}", id.short()),
                            "shorter than its chunk table says",
                        )
                    })?;
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let end = range.end.min(self.disk.size);
        let mut out: Vec<Range<u64>> = Vec::new();
        if range.start >= end {
            return Ok(out);
        }
        for (start, len, id) in self.pieces(range.start..end)? {
            if id.is_none() {
                continue;
            }
            let r = start.max(range.start)..(start + len).min(end);
            match out.last_mut() {
                Some(l) if l.end == r.start => l.end = r.end,
                _ => out.push(r),
            }
        }
        Ok(out)
    }
}

/// A small least-recently-used map bounded by the sum of its entries' weights.
struct Lru<K, V> {
    map: HashMap<K, (V, u64, u64)>,
    tick: u64,
    weight: u64,
    cap: u64,
}

impl<K: std::hash::Hash + Eq + Copy, V: Clone> Lru<K, V> {
    fn new(cap: u64) -> Lru<K, V> {
        Lru {
            map: HashMap::new(),
            tick: 0,
            weight: 0,
            cap,
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|e| {
            e.2 = t;
            e.0.clone()
        })
    }

    fn put(&mut self, k: K, v: V, w: u64) {
        self.tick += 1;
        if let Some(old) = self.map.insert(k, (v, w, self.tick)) {
            self.weight -= old.1;
        }
        self.weight += w;
        while self.weight > self.cap && self.map.len() > 1 {
            // Evict the oldest eighth at once: a scan per eviction would be quadratic.
            let mut ages: Vec<(u64, K)> = self.map.iter().map(|(k, e)| (e.2, *k)).collect();
            ages.sort_unstable_by_key(|a| a.0);
            for (_, k) in ages.iter().take((ages.len() / 8).max(1)) {
                if let Some(e) = self.map.remove(k) {
                    self.weight -= e.1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::PackEntry;

    fn loc(pack: u8, offset: u32, length: u32) -> BlobLoc {
        BlobLoc {
            pack: Id([pack; 32]),
            entry: PackEntry {
                kind: BlobKind::Data,
                id: Id([offset as u8; 32]),
                offset,
                length,
                raw_len: length,
            },
            created: 0,
        }
    }

    #[test]
    fn a_read_ends_at_the_next_pack_even_at_a_lower_offset() {
        // The next pack's blob lies before this read's start: the span must not be
        // computed across packs (it underflowed before).
        let locs = vec![
            loc(1, 1 << 20, 4096),
            loc(1, (1 << 20) + 4096, 4096),
            loc(2, 0, 4096),
        ];
        assert_eq!(read_end(&locs, 0), 2);
        assert_eq!(read_end(&locs, 2), 3);
    }

    #[test]
    fn a_read_ends_at_a_long_gap_or_at_its_size_limit() {
        let gap = MAX_GAP as u32 + 1;
        let locs = vec![loc(1, 0, 4096), loc(1, 4096 + gap, 4096)];
        assert_eq!(read_end(&locs, 0), 1);
        let big = (MAX_READ as u32) / 2;
        let locs = vec![loc(1, 0, big), loc(1, big, big), loc(1, 2 * big, 4096)];
        assert_eq!(read_end(&locs, 0), 2);
        // Overlapping entries of a damaged index do not underflow.
        let locs = vec![loc(1, 8192, 8192), loc(1, 4096, 4096)];
        assert_eq!(read_end(&locs, 0), 2);
    }
}
