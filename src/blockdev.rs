//! The random-access disk view every reader of guest data goes through.
//!
//! A [`BlockRead`] is a byte range with an allocation map: a disk image being backed up
//! (`image/`), a snapshot's disk read back through its chunk tables (`snapshot/view.rs`), a
//! partition or an LVM logical volume cut out of either ([`Slice`], [`Concat`]). Partition
//! tables, filesystem readers, the NBD export and changed-block re-chunking all read through
//! it, so none of them knows whether the bytes come from a live file or from a repository.
//!
//! Contract: `read_at` fills the whole buffer or fails; a read that reaches past `size()` is
//! an error, never a short read or silent zeros. Implementations are `Send + Sync` and
//! take `&self`, so several threads (FUSE, NBD clients, restore workers) read at once.

use crate::{Error, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub trait BlockRead: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Allocated ranges intersecting `range`, clipped to it, sorted and disjoint. What is
    /// not listed reads as zeros. The default says "all of it".
    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let end = range.end.min(self.size());
        let mut out = Vec::new();
        if range.start < end {
            out.push(range.start..end);
        }
        Ok(out)
    }
    /// The bytes of `range` mapped where they lie, for a source whose bytes are a plain
    /// file's (a raw image): a backup then reads them without copying. None: use
    /// `read_at`. Unlike `read_at`, holes in the range are not zero-filled by the caller:
    /// a map of a sparse file reads zeros there by itself.
    fn map(&self, _range: Range<u64>) -> Option<crate::mapping::Mapping> {
        None
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        (**self).allocated(range)
    }
    fn map(&self, range: Range<u64>) -> Option<crate::mapping::Mapping> {
        (**self).map(range)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        (**self).allocated(range)
    }
    fn map(&self, range: Range<u64>) -> Option<crate::mapping::Mapping> {
        (**self).map(range)
    }
}

/// The error for a read that reaches past the end of a view.
pub fn past_end(what: &str, offset: u64, len: usize, size: u64) -> Error {
    Error::Guest(format!(
        "{what}: read of {len} bytes at offset {offset} reaches past its end ({size} bytes)"
    ))
}

/// True if `len` bytes at `offset` lie inside `0..size`.
pub fn fits(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

/// A byte range of another view: a partition of a disk, one segment of a logical volume.
pub struct Slice {
    inner: Arc<dyn BlockRead>,
    start: u64,
    len: u64,
}

impl Slice {
    /// `start..start + len` of `inner`; refused if it does not lie inside it.
    pub fn new(inner: Arc<dyn BlockRead>, start: u64, len: u64, what: &str) -> Result<Slice> {
        if start.checked_add(len).is_none_or(|end| end > inner.size()) {
            return Err(Error::Guest(format!(
                "{what}: bytes {start}..+{len} lie outside the disk ({} bytes)",
                inner.size()
            )));
        }
        Ok(Slice { inner, start, len })
    }
}

impl BlockRead for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), self.len) {
            return Err(past_end("partition", offset, buf.len(), self.len));
        }
        self.inner.read_at(self.start + offset, buf)
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let end = range.end.min(self.len);
        if range.start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .allocated(self.start + range.start..self.start + end)?
            .into_iter()
            .map(|r| r.start - self.start..r.end - self.start)
            .collect())
    }
}

/// Pieces of other views laid end to end: a linear LVM logical volume made of segments.
pub struct Concat {
    /// (start in this view, piece), sorted, covering `0..size` without gaps.
    pieces: Vec<(u64, Arc<dyn BlockRead>)>,
    size: u64,
}

impl Concat {
    pub fn new(parts: Vec<Arc<dyn BlockRead>>) -> Result<Concat> {
        let mut pieces = Vec::with_capacity(parts.len());
        let mut size = 0u64;
        for p in parts {
            let len = p.size();
            pieces.push((size, p));
            size = size
                .checked_add(len)
                .ok_or_else(|| Error::Guest("volume segments add up past 2^64 bytes".into()))?;
        }
        Ok(Concat { pieces, size })
    }

    /// The pieces overlapping `offset..offset + len`, as (piece, offset in it, bytes).
    fn spans(&self, offset: u64, len: u64) -> Vec<(&Arc<dyn BlockRead>, u64, u64, u64)> {
        let mut out = Vec::new();
        let end = offset + len;
        let first = self.pieces.partition_point(|(s, _)| *s <= offset).max(1) - 1;
        for (start, p) in &self.pieces[first..] {
            if *start >= end {
                break;
            }
            let s = offset.max(*start);
            let e = end.min(start + p.size());
            if s < e {
                out.push((p, s - start, e - s, s));
            }
        }
        out
    }
}

impl BlockRead for Concat {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), self.size) {
            return Err(past_end("volume", offset, buf.len(), self.size));
        }
        for (p, at, n, pos) in self.spans(offset, buf.len() as u64) {
            let b = (pos - offset) as usize;
            p.read_at(at, &mut buf[b..b + n as usize])?;
        }
        Ok(())
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(Vec::new());
        }
        let mut out: Vec<Range<u64>> = Vec::new();
        for (p, at, n, pos) in self.spans(range.start, end - range.start) {
            for r in p.allocated(at..at + n)? {
                let r = pos + (r.start - at)..pos + (r.end - at);
                match out.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => out.push(r),
                }
            }
        }
        Ok(out)
    }
}

/// `top` where `ranges` say, `base` elsewhere: a disk whose changed ranges come from the
/// source and the rest from the parent snapshot (a changed-block backup's view of it).
pub struct Overlay {
    base: Arc<dyn BlockRead>,
    top: Arc<dyn BlockRead>,
    /// Sorted, disjoint.
    ranges: Vec<Range<u64>>,
}

impl Overlay {
    pub fn new(
        base: Arc<dyn BlockRead>,
        top: Arc<dyn BlockRead>,
        ranges: Vec<Range<u64>>,
    ) -> Overlay {
        Overlay { base, top, ranges }
    }
}

impl BlockRead for Overlay {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), self.size()) {
            return Err(past_end("disk", offset, buf.len(), self.size()));
        }
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        let first = self.ranges.partition_point(|r| r.end <= offset);
        for r in &self.ranges[first..] {
            if r.start >= end {
                break;
            }
            let (s, e) = (r.start.max(offset), r.end.min(end));
            if s > pos {
                self.base.read_at(
                    pos,
                    &mut buf[(pos - offset) as usize..(s - offset) as usize],
                )?;
            }
            self.top
                .read_at(s, &mut buf[(s - offset) as usize..(e - offset) as usize])?;
            pos = e;
        }
        if pos < end {
            self.base
                .read_at(pos, &mut buf[(pos - offset) as usize..])?;
        }
        Ok(())
    }
}

/// A view held in memory: tests, fuzzing, and small objects.
pub struct MemDisk(pub Vec<u8>);

impl MemDisk {
    /// `read_at` over any byte slice.
    pub fn read_slice(data: &[u8], offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), data.len() as u64) {
            return Err(past_end("image", offset, buf.len(), data.len() as u64));
        }
        let o = offset as usize;
        buf.copy_from_slice(&data[o..o + buf.len()]);
        Ok(())
    }
}

impl BlockRead for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        MemDisk::read_slice(&self.0, offset, buf)
    }
}

/// A plain file read with `pread`, all of it data: for tests and tools that look at an
/// image the user points at. Backups use `image::open`, which knows formats and holes.
pub struct FileDisk {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
}

impl FileDisk {
    pub fn open(path: &Path) -> Result<FileDisk> {
        use std::io::{Seek, SeekFrom};
        let err = |e| Error::io(format!("opening {}", path.display()), e);
        let mut file = std::fs::File::open(path).map_err(err)?;
        let size = file.seek(SeekFrom::End(0)).map_err(err)?;
        Ok(FileDisk {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

impl BlockRead for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if !fits(offset, buf.len(), self.size) {
            return Err(past_end(
                &self.path.display().to_string(),
                offset,
                buf.len(),
                self.size,
            ));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_concat() {
        let base: Arc<dyn BlockRead> = Arc::new(MemDisk((0..=255u8).cycle().take(4096).collect()));
        let a: Arc<dyn BlockRead> = Arc::new(Slice::new(base.clone(), 100, 50, "a").unwrap());
        let b: Arc<dyn BlockRead> = Arc::new(Slice::new(base.clone(), 1000, 30, "b").unwrap());
        assert!(Slice::new(base.clone(), 4000, 100, "c").is_err());
        assert!(Slice::new(base, u64::MAX, 2, "d").is_err());
        let c = Concat::new(vec![a, b]).unwrap();
        assert_eq!(c.size(), 80);
        let mut buf = [0u8; 10];
        c.read_at(45, &mut buf).unwrap();
        let want: Vec<u8> = (145..150u32)
            .chain(1000..1005)
            .map(|v| (v % 256) as u8)
            .collect();
        assert_eq!(&buf[..], &want[..]);
        assert!(c.read_at(75, &mut buf).is_err());
        assert!(c.read_at(u64::MAX - 2, &mut buf).is_err());
        assert_eq!(c.allocated(0..1000).unwrap(), vec![0..80]);
    }
}
