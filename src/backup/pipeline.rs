//! The backup pipeline: one reader, a pool of workers, one writer, bounded queues between.
//!
//! ```text
//! reader ──segments──► workers (chunk, hash, dedup, compress, seal) ──results──► writer
//!   ▲                                                                             │
//!   └──────────────── segment buffers return once the writer took a result ◄──────┘
//! ```
//!
//! Memory is bounded by the number of segments in flight (workers + 1): each holds a read
//! buffer of `segment_size` bytes (or a map of the source), and once chunked one buffer of
//! its sealed blobs, freed when they are in packs. It does not grow with the image
//! (BENCHMARKS.md J). The writer takes results in disk order, so blobs land in packs in
//! disk order and chunk tables are built as the disk is read.

use crate::chunker::{is_zero, Chunker, Piece};
use crate::crypto::Sealer;
use crate::repo::blobs::Claims;
use crate::repo::cache::{CacheReader, IndexCache};
use crate::repo::pack::{seal_blob, seal_blob_into, sealed_len_max, BlobKind, SealedBlob};
use crate::repo::packer::{Packer, WrittenIndex};
use crate::repo::Repository;
use crate::snapshot::{ChunkTable, Disk, Extent};
use crate::vm::Item;
use crate::{Error, Id, Result};
use bytes::BytesMut;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// The reader asks for allocation a window at a time, and passes a window without any
/// allocated byte on as one hole, never touching a buffer: an empty 16 TiB disk costs
/// 16,384 metadata lookups, not 16 TiB of memset. A power of two, at most the table span,
/// so windows never straddle a table.
pub(super) const WINDOW: u64 = 1 << 30;

/// Bytes of a mapped segment released at once as its pieces are sealed (Mapping::release).
/// Per chunk, the 2 GiB backup made 54,000 madvise calls at 73 µs each.
const RELEASE_STEP: usize = 1 << 20;

/// A segment read from a disk, on its way to a worker.
struct Segment {
    seq: u64,
    disk: usize,
    /// Disk offset of the segment start.
    offset: u64,
    len: usize,
    allocated: Vec<Range<usize>>,
    /// None for a segment with nothing allocated: it is a hole, and nothing is read.
    /// Otherwise a buffer from the pool: it holds the bytes, or, when `mapped` does, it is
    /// only the token that keeps the number of segments in flight bounded.
    buf: Option<Vec<u8>>,
    /// The segment's bytes mapped from the source (a raw image), read without a copy.
    mapped: Option<crate::mapping::Mapping>,
    /// The parent snapshot's pieces of the same disk range, when it had a segment there.
    guide: Option<Vec<Extent>>,
}

/// A worker's output for one segment.
struct Chunked {
    seq: u64,
    disk: usize,
    offset: u64,
    len: usize,
    extents: Vec<Extent>,
    blobs: Vec<SealedBlob>,
    bytes_read: u64,
    holes: u64,
    /// The segment's bytes were the parent's, so its pieces were the parent's too.
    followed: bool,
    buf: Option<Vec<u8>>,
}

/// What the workers and the writer share: read-only but for the claim set.
pub(super) struct Shared<'a> {
    pub(super) repo: &'a Repository,
    pub(super) cache: &'a IndexCache,
    pub(super) sealer: Sealer,
    pub(super) chunker: Chunker,
    /// Ids this session stores that are not yet in the cache.
    pub(super) claims: Claims,
    /// What of the old chunks is stored again next to the new ones.
    pub(super) capping: super::capping::Capping,
    /// Packs a prune recorded as unused (gc::pending): a blob only they hold counts as
    /// absent and is stored again, since a later prune may delete them under this backup.
    pub(super) avoid: &'a HashSet<Id>,
}

/// The writer's state: the packer and counters.
pub(super) struct Writer<'a> {
    pub(super) packer: Packer<'a>,
    pub(super) bytes_read: u64,
    pub(super) bytes_new: u64,
    pub(super) holes: u64,
    /// Bytes of segments whose cuts were taken from the parent (Shared::follow).
    pub(super) bytes_followed: u64,
}

/// One backup session.
pub(super) struct Session<'a> {
    pub(super) shared: Shared<'a>,
    pub(super) w: Writer<'a>,
}

impl<'a> Session<'a> {
    /// A session that may store up to `rewrite_budget` bytes of old chunks again (capping).
    pub(super) fn new(
        repo: &'a Repository,
        cache: &'a IndexCache,
        avoid: &'a HashSet<Id>,
        rewrite_budget: u64,
    ) -> Session<'a> {
        // One salt, hence one sealing key, for all packs of this session.
        let packer = Packer::new(repo);
        Session {
            shared: Shared {
                repo,
                cache,
                sealer: packer.sealer().clone(),
                chunker: Chunker::new(repo.config.chunker, repo.keys.chunker_seed()),
                claims: Claims::default(),
                capping: super::capping::Capping::new(rewrite_budget, crate::repo::now_ns()),
                avoid,
            },
            w: Writer {
                packer,
                bytes_read: 0,
                bytes_new: 0,
                holes: 0,
                bytes_followed: 0,
            },
        }
    }

    /// Reads, chunks and stores `sources`; returns each disk's table ids.
    pub(super) fn run_pipeline(
        &mut self,
        sources: &[&Item],
        guides: &[Option<&Disk>],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Vec<Option<Id>>>> {
        crate::fixed_mmap_threshold();
        let seg_size = self.shared.repo.config.chunker.segment_size as u64;
        let span = self.shared.repo.config.table_span;
        let (sh, w) = (&self.shared, &mut self.w);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let buffers = workers + 1;
        let mut builders: Vec<TableBuilder> = sources
            .iter()
            .map(|s| TableBuilder::new(s.image.size(), span))
            .collect();

        std::thread::scope(|scope| -> Result<()> {
            let (seg_tx, seg_rx) = sync_channel::<Segment>(1);
            let (res_tx, res_rx) = sync_channel::<Result<Chunked>>(1);
            let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(buffers);
            for _ in 0..buffers {
                pool_tx.send(Vec::new()).expect("pool has room");
            }
            let window = span.min(WINDOW);
            let reader = scope.spawn(move || {
                let guides = Guides::new(sh, guides);
                read_segments(sources, guides, seg_size, window, seg_tx, pool_rx)
            });
            let seg_rx = Arc::new(Mutex::new(seg_rx));
            for _ in 0..workers {
                let (seg_rx, res_tx) = (seg_rx.clone(), res_tx.clone());
                scope.spawn(move || loop {
                    let seg = match seg_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    if res_tx.send(sh.chunk_segment(seg)).is_err() {
                        return;
                    }
                });
            }
            // Only the workers hold these now: when the writer stops early (an error) and
            // the workers exit, the reader's next send fails instead of blocking forever.
            drop(res_tx);
            drop(seg_rx);
            let written = w.take_results(sh, res_rx, &pool_tx, &mut builders, progress);
            drop(pool_tx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(Error::Other("reader thread panicked".into())));
            // A reader failure (an image that shrank) explains a writer stopping early.
            read.and(written)
        })?;
        Ok(builders.into_iter().map(|b| b.tables).collect())
    }
}

impl Writer<'_> {
    /// The writer: takes results in disk order, stores blobs, builds tables.
    fn take_results(
        &mut self,
        sh: &Shared,
        res_rx: Receiver<Result<Chunked>>,
        pool: &SyncSender<Vec<u8>>,
        builders: &mut [TableBuilder],
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let mut next = 0u64;
        let mut waiting = BTreeMap::new();
        for r in res_rx {
            let c = r?;
            waiting.insert(c.seq, c);
            while let Some(c) = waiting.remove(&next) {
                next += 1;
                self.bytes_read += c.bytes_read;
                self.holes += c.holes;
                if c.followed {
                    self.bytes_followed += c.len as u64;
                }
                // Each blob is freed once in its pack, not with the whole segment's.
                for b in c.blobs {
                    self.bytes_new += b.raw_len as u64;
                    self.add_blob(sh, &b)?;
                }
                let done = builders[c.disk].add(c.offset, c.len as u64, &c.extents);
                for (slot, table) in done {
                    builders[c.disk].tables[slot] = self.store_table(sh, &table)?;
                }
                progress(c.bytes_read);
                // The reader may now reuse the buffer; if it has stopped, that is fine.
                if let Some(buf) = c.buf {
                    let _ = pool.send(buf);
                }
            }
        }
        Ok(())
    }

    pub(super) fn store_table(&mut self, sh: &Shared, table: &ChunkTable) -> Result<Option<Id>> {
        if table.is_hole() {
            return Ok(None);
        }
        let plain = table.encode();
        let id = sh.repo.keys.chunk_id(&plain);
        if sh.known(&sh.cache.reader()?, &id)?.is_none() && sh.claims.claim(id) {
            let blob = seal_blob(
                &sh.sealer,
                BlobKind::Table,
                id,
                &plain,
                sh.repo.config.zstd_level,
            );
            self.add_blob(sh, &blob)?;
        }
        Ok(Some(id))
    }

    pub(super) fn add_blob(&mut self, sh: &Shared, blob: &SealedBlob) -> Result<()> {
        if let Some(written) = self.packer.add(blob)? {
            sh.indexed(&written)?;
        }
        Ok(())
    }
}

impl Shared<'_> {
    /// Where the index has blob `id` (pack, time written), unless only in a pack to avoid.
    pub(super) fn known(&self, reader: &CacheReader, id: &Id) -> Result<Option<(Id, u64)>> {
        Ok(reader
            .get(id)?
            .filter(|l| !self.avoid.contains(&l.pack))
            .map(|l| (l.pack, l.created)))
    }

    fn chunk_segment(&self, seg: Segment) -> Result<Chunked> {
        let Some(buf) = &seg.buf else {
            return Ok(Chunked {
                seq: seg.seq,
                disk: seg.disk,
                offset: seg.offset,
                len: seg.len,
                extents: vec![Extent {
                    len: seg.len as u32,
                    id: None,
                }],
                blobs: Vec::new(),
                bytes_read: 0,
                holes: seg.len as u64,
                followed: false,
                buf: None,
            });
        };
        let data = match &seg.mapped {
            Some(m) => m.bytes(),
            None => &buf[..seg.len],
        };
        let followed = seg.guide.as_deref().and_then(|g| self.follow(data, g));
        let is_followed = followed.is_some();
        let ided = match followed {
            Some(ided) => ided,
            None => self.identify(data, &self.chunker.split(data, &seg.allocated)),
        };
        // The segment's pages go as its pieces are sealed (Mapping::release).
        let release = |r: Range<usize>| {
            if let Some(m) = &seg.mapped {
                m.release(r)
            }
        };
        let (extents, blobs, holes) = self.store_identified(data, &ided, &release)?;
        let bytes_read = seg.allocated.iter().map(|r| (r.end - r.start) as u64).sum();
        Ok(Chunked {
            seq: seg.seq,
            disk: seg.disk,
            offset: seg.offset,
            len: seg.len,
            extents,
            blobs,
            bytes_read,
            holes,
            followed: is_followed,
            buf: seg.buf,
        })
    }

    /// Turns the pieces of `data` into extents, hashing each chunk and sealing those the
    /// index does not have yet (and no other worker claimed). Returns the extents, the new
    /// blobs and the hole bytes.
    pub(super) fn store_pieces(
        &self,
        data: &[u8],
        pieces: &[Piece],
    ) -> Result<(Vec<Extent>, Vec<SealedBlob>, u64)> {
        self.store_identified(data, &self.identify(data, pieces), &|_| {})
    }

    /// Each piece with its chunk id (None for a hole).
    fn identify(&self, data: &[u8], pieces: &[Piece]) -> Vec<(Piece, Option<Id>)> {
        pieces
            .iter()
            .map(|p| {
                let id = p
                    .data
                    .then(|| self.repo.keys.chunk_id(&data[p.offset..p.offset + p.len]));
                (*p, id)
            })
            .collect()
    }

    /// The parent's pieces of a segment, if `data` is exactly what they hold: every chunk
    /// hashes to the parent's id and every hole is zeros. Then the chunker would cut `data`
    /// where it cut the parent (pieces depend on the segment's bytes only, cut rules 2 and 3), so
    /// the costly part of a re-read of an unchanged segment, finding the cuts, is skipped,
    /// while every byte is still hashed. None at the first difference.
    fn follow(&self, data: &[u8], guide: &[Extent]) -> Option<Vec<(Piece, Option<Id>)>> {
        let mut out = Vec::with_capacity(guide.len());
        let mut offset = 0;
        for e in guide {
            let len = e.len as usize;
            let bytes = data.get(offset..offset + len)?;
            let same = match e.id {
                None => is_zero(bytes),
                Some(id) => self.repo.keys.chunk_id(bytes) == id,
            };
            if !same {
                return None;
            }
            let data = e.id.is_some();
            out.push((Piece { offset, len, data }, e.id));
            offset += len;
        }
        (offset == data.len()).then_some(out)
    }

    /// `store_pieces` for pieces whose ids are known. `release` is told, in order, each
    /// range of `data` after which no byte before its end is needed.
    fn store_identified(
        &self,
        data: &[u8],
        pieces: &[(Piece, Option<Id>)],
        release: &dyn Fn(Range<usize>),
    ) -> Result<(Vec<Extent>, Vec<SealedBlob>, u64)> {
        let reader = self.cache.reader()?;
        let mut extents = Vec::with_capacity(pieces.len());
        let mut holes = 0;
        // (piece, id, where the index has it) of each data piece.
        let mut found = Vec::with_capacity(pieces.len());
        for (p, id) in pieces {
            extents.push(Extent {
                len: p.len as u32,
                id: *id,
            });
            match id {
                None => holes += p.len as u64,
                Some(id) => found.push((p, *id, self.known(&reader, id)?)),
            }
        }
        let old: Vec<(u64, Option<(Id, u64)>)> =
            found.iter().map(|(p, _, l)| (p.len as u64, *l)).collect();
        let again = self.capping.choose(&old);
        let store = |loc: &Option<_>, again: bool| loc.is_none() || again;
        // One buffer with room for every blob the segment may store (seal_blob_into).
        let room = found
            .iter()
            .zip(&again)
            .filter(|((_, _, loc), again)| store(loc, **again))
            .map(|((p, _, _), _)| sealed_len_max(&self.sealer, p.len))
            .sum();
        let mut out = BytesMut::with_capacity(room);
        let mut blobs = Vec::new();
        let mut done = 0;
        for ((p, id, loc), again) in found.into_iter().zip(again) {
            if store(&loc, again) && self.claims.claim(id) {
                let bytes = &data[p.offset..p.offset + p.len];
                let level = self.repo.config.zstd_level;
                let sealed =
                    seal_blob_into(&mut out, &self.sealer, BlobKind::Data, id, bytes, level);
                blobs.push(sealed);
            }
            // In steps, not per chunk: each release costs the other cores a TLB flush.
            if p.offset + p.len - done >= RELEASE_STEP {
                release(done..p.offset + p.len);
                done = p.offset + p.len;
            }
        }
        Ok((extents, blobs, holes))
    }

    /// Chunk `id` with its bytes, sealed for this session's packs.
    pub(super) fn seal(&self, id: Id, bytes: &[u8]) -> SealedBlob {
        let level = self.repo.config.zstd_level;
        seal_blob(&self.sealer, BlobKind::Data, id, bytes, level)
    }

    /// Lets the cache answer for blobs an index file now names; they need no claim.
    pub(super) fn indexed(&self, written: &WrittenIndex) -> Result<()> {
        self.cache.add(&written.name, &written.index)?;
        self.claims.release(
            written
                .index
                .packs
                .iter()
                .flat_map(|p| &p.entries)
                .map(|e| &e.id),
        );
        Ok(())
    }
}

/// The reader thread: one segment at a time, holes never read, windows without any
/// allocated byte passed on whole.
/// The parent's tables of the disks being read, loaded a span at a time as the reader
/// reaches it, cut into the reader's segments.
struct Guides<'a> {
    repo: &'a Repository,
    reader: Option<CacheReader>,
    disks: &'a [Option<&'a Disk>],
    loaded: Option<LoadedTable>,
}

/// (disk, span slot) of a loaded parent table, and its extents with their disk offsets.
type LoadedTable = ((usize, usize), Vec<(u64, Extent)>);

impl<'a> Guides<'a> {
    fn new(sh: &'a Shared, disks: &'a [Option<&'a Disk>]) -> Guides<'a> {
        Guides {
            repo: sh.repo,
            // No cache reader, no guides: the segments are then simply chunked.
            reader: sh.cache.reader().ok(),
            disks,
            loaded: None,
        }
    }

    /// The parent's pieces of `disk`'s range `r` if its segment there was the same range.
    /// A table that cannot be loaded only means no guide.
    fn segment(&mut self, disk: usize, r: Range<u64>, seg_size: u64) -> Option<Vec<Extent>> {
        let d = (*self.disks.get(disk)?)?;
        if (r.start + seg_size).min(d.size) != r.end {
            return None;
        }
        let slot = (r.start / d.table_span) as usize;
        if self.loaded.as_ref().map(|l| l.0) != Some((disk, slot)) {
            let base = slot as u64 * d.table_span;
            let mut at = base;
            let extents = match d.tables.get(slot)? {
                None => vec![(
                    base,
                    Extent {
                        len: (d.table_span.min(d.size - base)) as u32,
                        id: None,
                    },
                )],
                Some(t) => crate::snapshot::load_table(self.repo, self.reader.as_ref()?, t)
                    .ok()?
                    .extents
                    .into_iter()
                    .map(|e| {
                        let start = at;
                        at += e.len as u64;
                        (start, e)
                    })
                    .collect(),
            };
            self.loaded = Some(((disk, slot), extents));
        }
        let (_, extents) = self.loaded.as_ref()?;
        let first = extents.partition_point(|(s, e)| s + e.len as u64 <= r.start);
        let mut out = Vec::new();
        for (s, e) in &extents[first..] {
            if *s >= r.end {
                break;
            }
            let (a, b) = ((*s).max(r.start), (s + e.len as u64).min(r.end));
            // Data never crosses a segment edge; a hole that does is cut there.
            if e.id.is_some() && (a, b) != (*s, s + e.len as u64) {
                return None;
            }
            out.push(Extent {
                len: (b - a) as u32,
                id: e.id,
            });
        }
        Some(out)
    }
}

fn read_segments(
    sources: &[&Item],
    mut guides: Guides,
    seg_size: u64,
    window: u64,
    out: SyncSender<Segment>,
    pool: Receiver<Vec<u8>>,
) -> Result<()> {
    let mut seq = 0;
    for (disk, src) in sources.iter().enumerate() {
        let size = src.image.size();
        let mut wstart = 0;
        while wstart < size {
            let wend = (wstart + window).min(size);
            let alloc = src.image.allocated(wstart..wend)?;
            let mut offset = wstart;
            while offset < wend {
                let len = if alloc.is_empty() {
                    wend - offset
                } else {
                    seg_size.min(wend - offset)
                };
                let end = offset + len;
                let allocated: Vec<Range<usize>> = alloc
                    .iter()
                    .filter(|r| r.start < end && r.end > offset)
                    .map(|r| {
                        (r.start.max(offset) - offset) as usize..(r.end.min(end) - offset) as usize
                    })
                    .collect();
                let mut mapped = None;
                let buf = if allocated.is_empty() {
                    None
                } else {
                    // Waiting here for a free buffer is what bounds memory.
                    let Ok(mut buf) = pool.recv() else {
                        return Ok(());
                    };
                    // Mapped where the source can be (only its data pages faulted in,
                    // here, so that the workers find them present), else read.
                    mapped = src.image.map(offset..end);
                    if let Some(m) = &mapped {
                        allocated.iter().for_each(|r| m.populate(r.clone()));
                        Some(buf)
                    } else {
                        buf.resize(len as usize, 0);
                        let mut pos = 0;
                        for r in &allocated {
                            buf[pos..r.start].fill(0);
                            src.image
                                .read_at(offset + r.start as u64, &mut buf[r.clone()])?;
                            pos = r.end;
                        }
                        buf[pos..len as usize].fill(0);
                        Some(buf)
                    }
                };
                let guide = buf
                    .as_ref()
                    .and_then(|_| guides.segment(disk, offset..end, seg_size));
                let seg = Segment {
                    seq,
                    disk,
                    offset,
                    len: len as usize,
                    allocated,
                    buf,
                    mapped,
                    guide,
                };
                if out.send(seg).is_err() {
                    return Ok(()); // the writer stopped; its error is reported
                }
                seq += 1;
                offset = end;
            }
            wstart = wend;
        }
    }
    Ok(())
}

/// Collects one disk's extents into tables, one per span.
struct TableBuilder {
    size: u64,
    span: u64,
    current: ChunkTable,
    tables: Vec<Option<Id>>,
}

impl TableBuilder {
    fn new(size: u64, span: u64) -> TableBuilder {
        TableBuilder {
            size,
            span,
            current: ChunkTable::default(),
            tables: vec![None; size.div_ceil(span) as usize],
        }
    }

    /// Adds a segment's extents; returns the tables it completed, with their slot.
    fn add(&mut self, offset: u64, len: u64, extents: &[Extent]) -> Vec<(usize, ChunkTable)> {
        extents.iter().for_each(|e| self.current.push(*e));
        let end = offset + len;
        if end % self.span == 0 || end == self.size {
            let slot = (offset / self.span) as usize;
            return vec![(slot, std::mem::take(&mut self.current))];
        }
        Vec::new()
    }
}
