//! Changed-block backups that are true synthetic fulls: only the ranges a change map marks
//! are read from the source, and the chunk tables come out exactly as a full read would
//! make them (decision 1 of the design).
//!
//! Why that is possible: a segment is cut independently of its neighbours, and inside it a
//! chunk boundary depends only on the bytes from the previous boundary (FastCDC keeps no
//! state across a cut) and on the zero-block structure, which is local too (a hole is a run
//! of disk-aligned zero blocks of at least the minimum length, so it can reach across a cut
//! only through zero blocks next to it). So around each changed range we re-chunk a
//! *window*: from a parent boundary before the change whose preceding block is non-zero
//! (no zero run can reach across it), to the first new cut after the change that is also a
//! parent boundary with a non-zero block before it. From there on the parent's pieces are
//! the new pieces. The window's unchanged bytes come from the parent's chunks in the
//! repository, so the source is read only where the map says it changed.

use super::changes::ChangeMap;
use super::pipeline::{Shared, Writer};
use crate::blockdev::BlockRead;
use crate::chunker::{is_zero, Piece, ZERO_BLOCK};
use crate::repo::config::ChunkerKind;
use crate::repo::pack::SealedBlob;
use crate::snapshot::view::DiskView;
use crate::snapshot::{ChunkTable, Disk, Extent};
use crate::vm::Item;
use crate::{Error, Id, Result};
use std::ops::Range;

/// What a changed-block read of one disk did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Bytes read from the source (the changed ranges that are allocated).
    pub read: u64,
    /// Bytes of the windows taken from the parent snapshot instead (holes included).
    pub from_parent: u64,
    /// Disk bytes the map let the backup skip.
    pub skipped: u64,
}

/// A piece of a segment in disk offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct P {
    start: u64,
    len: u64,
    id: Option<Id>,
}

impl P {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What the re-chunking side hands the workers, in disk order.
enum Work {
    /// A span the map does not touch: the parent's table as it is.
    Keep(Option<Id>),
    /// One segment of a touched span: the parent's pieces, the changes inside it.
    Segment {
        pieces: Vec<P>,
        changes: Vec<Range<u64>>,
        seg: Range<u64>,
    },
    /// The span's segments are all sent (it had `changed` bytes of changes): store its table.
    EndSpan { changed: u64 },
}

/// What a worker hands the writer: the work item, with a segment's re-chunking done.
enum Store {
    Keep(Option<Id>),
    Segment(Vec<P>, Rechunked, bool),
    EndSpan { changed: u64 },
}

/// Re-chunks disk `src` around `map`'s ranges; returns its tables.
///
/// Three stages, like a full read's pipeline: this thread walks the parent's tables and
/// hands out the segments a change touches, one worker per core re-chunks them, and a
/// writer thread stores blobs and tables in disk order. Segments differ a lot in work (a
/// write of 8 MiB against one of 256 KiB), so workers take the next segment as soon as
/// they are free instead of waiting for a batch: batches of one segment per core left a
/// core idle for half of a clustered night (BENCHMARKS.md G5). At most one segment per
/// core plus one is out between this thread and the writer, which bounds the memory.
pub(super) fn disk<'b>(
    sh: &Shared<'b>,
    w: &mut Writer<'b>,
    src: &Item,
    parent: &Disk,
    parent_view: &DiskView,
    map: &ChangeMap,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<Option<Id>>, Stats)> {
    use std::sync::mpsc::{channel, sync_channel};
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let (tables, mut stats) = std::thread::scope(|scope| -> Result<(Vec<Option<Id>>, Stats)> {
        let (work_tx, work_rx) = sync_channel::<(u64, Work)>(1);
        let (res_tx, res_rx) = channel::<(u64, Result<Store>)>();
        let (token_tx, token_rx) = sync_channel::<()>(workers + 1);
        for _ in 0..=workers {
            token_tx.send(()).expect("the token channel has room");
        }
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        for _ in 0..workers {
            let (work_rx, res_tx) = (work_rx.clone(), res_tx.clone());
            scope.spawn(move || loop {
                let next = work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((seq, work)) = next else { return };
                let done = match work {
                    Work::Keep(t) => Ok(Store::Keep(t)),
                    Work::EndSpan { changed } => Ok(Store::EndSpan { changed }),
                    Work::Segment {
                        pieces,
                        changes,
                        seg,
                    } => rechunk_segment(sh, src, parent_view, pieces, &changes, seg),
                };
                if res_tx.send((seq, done)).is_err() {
                    return;
                }
            });
        }
        // Only the workers hold these now: when the writer stops (an error), the workers'
        // sends fail, they exit, and this thread's next send fails instead of blocking.
        drop(res_tx);
        drop(work_rx);
        let writer = scope.spawn(move || store_in_order(sh, w, res_rx, token_tx, progress));
        let walked = walk_spans(sh, parent, map, &work_tx, &token_rx);
        drop(work_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the writer thread panicked".into())));
        // A writer failure stops the walk (its sends fail): report the writer's.
        match (written, walked) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(t), Ok(())) => Ok(t),
        }
    })?;
    stats.skipped = parent.size.saturating_sub(map.bytes());
    Ok((tables, stats))
}

/// A worker's part: re-chunks one segment (or passes an untouched one through).
fn rechunk_segment(
    sh: &Shared,
    src: &Item,
    parent_view: &DiskView,
    pieces: Vec<P>,
    changes: &[Range<u64>],
    seg: Range<u64>,
) -> Result<Store> {
    if changes.is_empty() {
        return Ok(Store::Segment(pieces, Rechunked::default(), false));
    }
    let mut win = Window {
        sh,
        src,
        parent_view,
        pieces: &pieces,
        changes,
        seg,
        done: Rechunked::default(),
    };
    let out = win.segment()?;
    win.cap(&out)?;
    Ok(Store::Segment(out, win.done, true))
}

/// The writer thread: stores blobs and tables in disk order as the workers finish them,
/// and gives a segment's token back once it is stored.
fn store_in_order<'b>(
    sh: &Shared<'b>,
    w: &mut Writer<'b>,
    rx: std::sync::mpsc::Receiver<(u64, Result<Store>)>,
    tokens: std::sync::mpsc::SyncSender<()>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<Option<Id>>, Stats)> {
    let mut stats = Stats::default();
    let mut tables = Vec::new();
    let mut table = ChunkTable::default();
    let mut waiting = std::collections::BTreeMap::new();
    let mut next = 0u64;
    for (seq, r) in rx {
        waiting.insert(seq, r?);
        while let Some(msg) = waiting.remove(&next) {
            next += 1;
            match msg {
                Store::Keep(t) => tables.push(t),
                Store::Segment(out, done, held_token) => {
                    w.holes += done.holes;
                    stats.read += done.stats.read;
                    stats.from_parent += done.stats.from_parent;
                    for b in &done.blobs {
                        w.bytes_new += b.raw_len as u64;
                        w.add_blob(sh, b)?;
                    }
                    for p in out {
                        table.push(Extent {
                            len: p.len as u32,
                            id: p.id,
                        });
                    }
                    if held_token {
                        // The walk may have stopped; then nobody waits for it.
                        let _ = tokens.send(());
                    }
                }
                Store::EndSpan { changed } => {
                    tables.push(w.store_table(sh, &std::mem::take(&mut table))?);
                    progress(changed);
                }
            }
        }
    }
    Ok((tables, stats))
}

/// The walking side of [`disk`]: hands out each span's work in disk order, a touched
/// segment only once a token says there is room for it.
fn walk_spans(
    sh: &Shared,
    parent: &Disk,
    map: &ChangeMap,
    tx: &std::sync::mpsc::SyncSender<(u64, Work)>,
    tokens: &std::sync::mpsc::Receiver<()>,
) -> Result<()> {
    let span = parent.table_span;
    let size = parent.size;
    let seg = sh.repo.config.chunker.segment_size as u64;
    let reader = sh.cache.reader()?;
    // The writer stopped (its error is what `disk` reports).
    let stopped = || Error::Other("the writer thread stopped".into());
    let mut seq = 0u64;
    let mut send = |work: Work| {
        seq += 1;
        tx.send((seq - 1, work)).map_err(|_| stopped())
    };
    for (slot, ptable) in parent.tables.iter().enumerate() {
        let base = slot as u64 * span;
        let end = (base + span).min(size);
        let changes = clip(&map.ranges, base..end);
        if changes.is_empty() {
            send(Work::Keep(*ptable))?;
            continue;
        }
        let pieces = match ptable {
            None => vec![P {
                start: base,
                len: end - base,
                id: None,
            }],
            Some(t) => {
                let t = crate::snapshot::load_table(sh.repo, &reader, t)?;
                let mut v = Vec::with_capacity(t.extents.len());
                let mut off = base;
                for e in &t.extents {
                    v.push(P {
                        start: off,
                        len: e.len as u64,
                        id: e.id,
                    });
                    off += e.len as u64;
                }
                if off != end {
                    return Err(Error::corrupt(
                        format!("chunk table of span {slot} of the parent"),
                        "does not cover its span",
                    ));
                }
                v
            }
        };
        let mut s0 = base;
        while s0 < end {
            let s1 = (s0 + seg).min(end);
            let segc = clip(&changes, s0..s1);
            if !segc.is_empty() {
                tokens.recv().map_err(|_| stopped())?;
            }
            send(Work::Segment {
                pieces: clip_pieces(&pieces, s0..s1),
                changes: segc,
                seg: s0..s1,
            })?;
            s0 = s1;
        }
        let changed = changes.iter().map(|r| r.end - r.start).sum();
        send(Work::EndSpan { changed })?;
    }
    Ok(())
}

/// The ranges of `v` inside `r`, clipped.
fn clip(v: &[Range<u64>], r: Range<u64>) -> Vec<Range<u64>> {
    v.iter()
        .filter(|c| c.start < r.end && c.end > r.start)
        .map(|c| c.start.max(r.start)..c.end.min(r.end))
        .collect()
}

/// The pieces inside `r`; holes that cross its edges are cut there (data never does).
fn clip_pieces(v: &[P], r: Range<u64>) -> Vec<P> {
    v.iter()
        .filter(|p| p.start < r.end && p.end() > r.start)
        .map(|p| {
            let s = p.start.max(r.start);
            P {
                start: s,
                len: p.end().min(r.end) - s,
                id: p.id,
            }
        })
        .collect()
}

/// What re-chunking one segment made, for the writer to take in disk order.
#[derive(Default)]
struct Rechunked {
    blobs: Vec<SealedBlob>,
    holes: u64,
    stats: Stats,
}

/// One segment being re-chunked.
struct Window<'a, 'b> {
    sh: &'a Shared<'b>,
    src: &'a Item,
    parent_view: &'a DiskView,
    /// The parent's pieces of the segment.
    pieces: &'a [P],
    changes: &'a [Range<u64>],
    seg: Range<u64>,
    done: Rechunked,
}

impl Window<'_, '_> {
    fn touches_change(&self, r: Range<u64>) -> bool {
        self.changes
            .iter()
            .any(|c| c.start < r.end && c.end > r.start)
    }

    /// The disk-aligned zero block holding byte `at`, clipped to the segment.
    fn block_of(&self, at: u64) -> Range<u64> {
        let b = at - at % ZERO_BLOCK as u64;
        b.max(self.seg.start)..(b + ZERO_BLOCK as u64).min(self.seg.end)
    }

    /// True if parent boundary `at` lets chunking restart there: the block before it and
    /// the byte at it are unchanged (FastCDC decides a cut from the bytes before it *and*
    /// the first byte after), and the block holds a non-zero byte, so no zero run reaches
    /// across. The block's part from `at` on is looked at first: it lies in the piece the
    /// window reads anyway, so the piece before is decompressed only if that part is zeros.
    fn firm_in_parent(&mut self, at: u64) -> Result<bool> {
        let b = self.block_of(at - 1);
        if self.touches_change(b.start..b.end.max(at + 1)) {
            return Ok(false);
        }
        for part in [at..b.end, b.start..at] {
            if part.is_empty() {
                continue;
            }
            let mut buf = vec![0u8; (part.end - part.start) as usize];
            self.parent_view.read_at(part.start, &mut buf)?;
            self.done.stats.from_parent += buf.len() as u64;
            if !is_zero(&buf) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn segment(&mut self) -> Result<Vec<P>> {
        let fixed = self.sh.chunker.params().kind == ChunkerKind::Fixed;
        let max = self.sh.chunker.params().max_size as u64;
        let mut out: Vec<P> = Vec::new();
        let mut pos = self.seg.start;
        let mut ci = 0;
        while ci < self.changes.len() {
            let r = self.changes[ci].clone();
            if r.end <= pos {
                ci += 1;
                continue;
            }
            // Back from the change to a boundary where chunking restarts.
            let mut k = self.pieces.partition_point(|p| p.end() <= r.start.max(pos));
            let mut w0 = self
                .pieces
                .get(k)
                .map_or(self.seg.end, |p| p.start)
                .max(pos);
            while w0 > pos {
                let prev = self.pieces[k - 1];
                let restart = if fixed {
                    // Fixed chunks are cut at fixed offsets: any boundary restarts.
                    true
                } else {
                    prev.id.is_some() && self.firm_in_parent(w0)?
                };
                if restart {
                    break;
                }
                k -= 1;
                w0 = prev.start.max(pos);
            }
            out.extend(
                self.pieces
                    .iter()
                    .filter(|p| p.start >= pos && p.end() <= w0),
            );
            // Forward until the new cuts fall back onto the parent's; the window grows
            // (doubling) without reading again what it holds. It starts at the end of the
            // parent piece after the one the change ends in: the new cuts mostly meet the
            // parent's there, and every byte fetched beyond is decompressed for nothing
            // (a database's scattered page writes each open a window).
            let after = self.pieces.partition_point(|p| p.end() <= r.end);
            let mut e = self
                .pieces
                .get(after + 1)
                .map_or(self.seg.end, |p| p.end())
                .min(r.end + 2 * max)
                .min(self.seg.end);
            let (mut buf, mut alloc) = self.assemble(w0..e)?;
            loop {
                let pieces = self.sh.chunker.split_at(&buf, &alloc, w0);
                if let Some((c, n)) = self.converge(&buf, &alloc, w0, e, &pieces)? {
                    self.emit(&buf, w0, &pieces[..n], &mut out)?;
                    pos = c;
                    break;
                }
                if e == self.seg.end {
                    self.emit(&buf, w0, &pieces, &mut out)?;
                    pos = e;
                    break;
                }
                let ne = (e + (e - w0).max(max)).min(self.seg.end);
                let (more, more_alloc) = self.assemble(e..ne)?;
                let shift = buf.len();
                buf.extend_from_slice(&more);
                for a in more_alloc {
                    let a = a.start + shift..a.end + shift;
                    match alloc.last_mut() {
                        Some(l) if l.end == a.start => l.end = a.end,
                        _ => alloc.push(a),
                    }
                }
                e = ne;
            }
            while ci < self.changes.len() && self.changes[ci].end <= pos {
                ci += 1;
            }
        }
        out.extend(self.pieces.iter().filter(|p| p.start >= pos));
        Ok(out)
    }

    /// The first new cut (and the number of new pieces before it) at which the parent's
    /// pieces take over: a parent boundary past every change that started before it, whose
    /// cut cannot have been moved by the window ending at `e`.
    fn converge(
        &self,
        buf: &[u8],
        alloc: &[Range<usize>],
        w0: u64,
        e: u64,
        pieces: &[Piece],
    ) -> Result<Option<(u64, usize)>> {
        // Zero blocks at the window's end, inside allocated data, may run on beyond it and
        // become a hole that ends the data run earlier: no cut from there on counts. An
        // unallocated tail is a hole whatever follows, so it starts where it starts.
        let trust_until = match alloc.last() {
            _ if e == self.seg.end => e,
            Some(a) if a.end == buf.len() => {
                let tz = buf[a.clone()].iter().rev().take_while(|&&b| b == 0).count() as u64;
                let z = e - tz;
                (z - z % ZERO_BLOCK as u64).min(e - 1)
            }
            _ => e - 1,
        };
        let mut need = 0u64;
        let mut ci = 0;
        for (n, p) in pieces.iter().enumerate() {
            let c = w0 + (p.offset + p.len) as u64;
            while ci < self.changes.len() && self.changes[ci].start < c {
                need = need.max(self.changes[ci].end);
                ci += 1;
            }
            if c < need || c > trust_until {
                continue;
            }
            if c == self.seg.end {
                return Ok(Some((c, n + 1)));
            }
            let parent_cut = self.pieces.binary_search_by_key(&c, |q| q.start).is_ok();
            if !parent_cut {
                continue;
            }
            if p.data {
                let b = self.block_of(c - 1);
                if b.end > e || self.touches_change(b.clone()) {
                    continue;
                }
                if is_zero(&buf[(b.start - w0) as usize..(b.end - w0) as usize]) {
                    continue;
                }
            }
            return Ok(Some((c, n + 1)));
        }
        Ok(None)
    }

    /// The new bytes of `r` and their allocation (relative to `r.start`): changed ranges
    /// from the source, the rest from the parent's chunks.
    fn assemble(&mut self, r: Range<u64>) -> Result<(Vec<u8>, Vec<Range<usize>>)> {
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        let mut alloc: Vec<Range<usize>> = Vec::new();
        let mut push = |a: Range<u64>| {
            let a = (a.start - r.start) as usize..(a.end - r.start) as usize;
            if a.is_empty() {
                return;
            }
            match alloc.last_mut() {
                Some(l) if l.end == a.start => l.end = a.end,
                _ => alloc.push(a),
            }
        };
        let mut pos = r.start;
        let changed = clip(self.changes, r.clone());
        let mut parts: Vec<(Range<u64>, bool)> = Vec::new();
        for c in changed {
            if c.start > pos {
                parts.push((pos..c.start, false));
            }
            parts.push((c.clone(), true));
            pos = c.end;
        }
        if pos < r.end {
            parts.push((pos..r.end, false));
        }
        for (part, changed) in parts {
            let dst = (part.start - r.start) as usize..(part.end - r.start) as usize;
            if changed {
                for a in self.src.image.allocated(part.clone())? {
                    let d = (a.start - r.start) as usize..(a.end - r.start) as usize;
                    self.src.image.read_at(a.start, &mut buf[d])?;
                    self.done.stats.read += a.end - a.start;
                    push(a);
                }
            } else {
                for p in clip_pieces(self.pieces, part.clone()) {
                    if p.id.is_some() {
                        push(p.start..p.end());
                    }
                }
                self.parent_view.read_at(part.start, &mut buf[dst])?;
                self.done.stats.from_parent += part.end - part.start;
            }
        }
        Ok((buf, alloc))
    }

    /// Capping (capping.rs) over the whole new segment, as a full read of it would do:
    /// a segment a change touches gains chunks in tonight's pack each night while the
    /// rest stay where they were, so it is the one that scatters. Old chunks in packs
    /// beyond the segment's first few are stored again, their bytes taken from the parent
    /// snapshot in the repository (the source is read only where the map says it
    /// changed). Pieces that overlap a change are left out: their bytes at this offset are
    /// not the parent's.
    fn cap(&mut self, out: &[P]) -> Result<()> {
        // A spent budget (soon, on a night of few changes) needs no index lookups at all.
        if self.sh.capping.spent() {
            return Ok(());
        }
        let reader = self.sh.cache.reader()?;
        let mut data = Vec::with_capacity(out.len());
        let mut old = Vec::with_capacity(out.len());
        for p in out {
            let Some(id) = p.id else { continue };
            let loc = match self.touches_change(p.start..p.end()) {
                true => None,
                false => self.sh.known(&reader, &id)?,
            };
            data.push((p, id));
            old.push((p.len, loc));
        }
        let again = self.sh.capping.choose(&old);
        for ((p, id), again) in data.into_iter().zip(again) {
            if !again || !self.sh.claims.claim(id) {
                continue;
            }
            let mut buf = vec![0u8; p.len as usize];
            self.parent_view.read_at(p.start, &mut buf)?;
            // The parent's piece at this offset is this chunk; a mismatch would be a
            // bug, and costs only the rewrite (the old copy stays in use).
            if self.sh.repo.keys.chunk_id(&buf) == id {
                self.done.blobs.push(self.sh.seal(id, &buf));
            }
        }
        Ok(())
    }

    /// Stores the new pieces and appends them.
    fn emit(&mut self, buf: &[u8], w0: u64, pieces: &[Piece], out: &mut Vec<P>) -> Result<()> {
        let (extents, blobs, holes) = self.sh.store_pieces(buf, pieces)?;
        self.done.holes += holes;
        self.done.blobs.extend(blobs);
        for (p, e) in pieces.iter().zip(extents) {
            out.push(P {
                start: w0 + p.offset as u64,
                len: p.len as u64,
                id: e.id,
            });
        }
        Ok(())
    }
}
