//! File content: the runs of blocks an inode's extent tree or block map gives, assembled
//! into reads (holes and unwritten extents as zeros, the tail past the mapped blocks as
//! zeros) and into the [`Mapping`] list `map()` returns; and inline data (the content kept
//! in `i_block` plus the `system.data` xattr).

use super::inode::{Inode, FL_EXTENTS, FL_INLINE_DATA};
use super::xattr::{self, INDEX_SYSTEM};
use super::{blockmap, extents, Ext4};
use crate::fs::Mapping;
use crate::{Error, Result};
use std::ops::Range;

/// Runs one lookup may return: 2 Mi runs (64 MiB of them) is a file far more fragmented
/// than any real one.
const MAX_RUNS: usize = 1 << 21;

/// `len` blocks from logical block `lblk`, stored from physical block `pblk`; `init` false
/// for an unwritten extent (allocated, reads as zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub lblk: u64,
    pub len: u64,
    pub pblk: u64,
    pub init: bool,
}

/// Runs in logical order, neighbours merged, with a count cap.
pub struct Runs {
    pub v: Vec<Run>,
    ino: u64,
}

impl Runs {
    pub fn new(ino: u64) -> Runs {
        Runs { v: Vec::new(), ino }
    }

    pub fn push(&mut self, r: Run) -> Result<()> {
        if let Some(last) = self.v.last_mut() {
            let last_end = last.lblk + last.len;
            if r.lblk < last_end {
                return Err(Error::Guest(format!(
                    "ext4: inode {}: logical block {} is mapped twice",
                    self.ino, r.lblk
                )));
            }
            if last_end == r.lblk && last.init == r.init && last.pblk + last.len == r.pblk {
                last.len += r.len;
                return Ok(());
            }
        }
        if self.v.len() >= MAX_RUNS {
            return Err(Error::Guest(format!(
                "ext4: inode {}: more than {MAX_RUNS} separate extents",
                self.ino
            )));
        }
        self.v.push(r);
        Ok(())
    }
}

impl Ext4 {
    /// The runs of `inode` overlapping logical blocks `want`, clipped to it.
    pub(super) fn runs(&self, inode: &Inode, want: Range<u64>) -> Result<Vec<Run>> {
        let mut out = Runs::new(inode.ino);
        if want.is_empty() || inode.has_flag(FL_INLINE_DATA) {
            return Ok(out.v);
        }
        if inode.has_flag(FL_EXTENTS) {
            extents::collect(self, inode.ino, inode.i_block(), want, &mut out)?;
        } else {
            blockmap::collect(self, inode.ino, inode.i_block(), want, &mut out)?;
        }
        Ok(out.v)
    }

    /// True if the content of `inode` lies in the inode (inline data, a fast symlink).
    pub(super) fn content_in_inode(&self, inode: &Inode) -> bool {
        inode.has_flag(FL_INLINE_DATA)
            || (inode.mode & 0xF000 == 0xA000 && inode.is_fast_symlink(&self.sb))
    }

    /// Content kept in the inode: `i_block`, then for inline data the `system.data` value.
    /// It may be shorter or longer than the size; the size decides.
    pub(super) fn inline_content(&self, inode: &Inode) -> Result<Vec<u8>> {
        let mut v = inode.i_block().to_vec();
        if inode.has_flag(FL_INLINE_DATA) && inode.size > v.len() as u64 {
            if let Some(more) = xattr::find(self, inode, INDEX_SYSTEM, b"data")? {
                v.extend_from_slice(&more);
            }
        }
        Ok(v)
    }

    /// Reads content at `offset`, clipped to the size: holes, unwritten extents and
    /// anything past the mapped blocks read as zeros.
    pub(super) fn read_content(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = inode.size;
        if offset >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        let buf = &mut buf[..n];
        buf.fill(0);
        if self.content_in_inode(inode) {
            let content = self.inline_content(inode)?;
            if let Some(src) = usize::try_from(offset).ok().and_then(|o| content.get(o..)) {
                let k = src.len().min(n);
                buf[..k].copy_from_slice(&src[..k]);
            }
            return Ok(n);
        }
        let bs = self.sb.block_size;
        let end = offset + n as u64;
        for run in self.runs(inode, offset / bs..end.div_ceil(bs))? {
            if !run.init {
                continue;
            }
            let rs = run.lblk.saturating_mul(bs);
            let re = (run.lblk + run.len).saturating_mul(bs);
            let s = rs.max(offset);
            let e = re.min(end);
            if s >= e {
                continue;
            }
            // pblk + len lies inside the volume, whose byte size fits u64 (checked at open).
            let disk = run.pblk * bs + (s - rs);
            let into = &mut buf[(s - offset) as usize..(e - offset) as usize];
            self.dev.read_at(disk, into)?;
        }
        Ok(n)
    }

    /// The content as [`Mapping`] pieces covering `0..size` rounded up to a block:
    /// stored runs, holes and unwritten extents (data = false), or one piece without a
    /// disk offset for content kept in the inode.
    pub(super) fn map_content(&self, inode: &Inode) -> Result<Vec<Mapping>> {
        let size = inode.size;
        if size == 0 {
            return Ok(Vec::new());
        }
        if self.content_in_inode(inode) {
            return Ok(vec![Mapping {
                file_offset: 0,
                len: size,
                disk_offset: None,
                data: true,
            }]);
        }
        let bs = self.sb.block_size;
        let nblocks = size.div_ceil(bs);
        let end = nblocks.saturating_mul(bs);
        let mut out: Vec<Mapping> = Vec::new();
        let mut pos = 0u64;
        let push = |out: &mut Vec<Mapping>, m: Mapping| match out.last_mut() {
            Some(last) if !last.data && !m.data => last.len += m.len,
            _ => out.push(m),
        };
        for r in self.runs(inode, 0..nblocks)? {
            let rs = r.lblk.saturating_mul(bs);
            let re = (r.lblk + r.len).saturating_mul(bs);
            if rs > pos {
                push(&mut out, hole(pos, rs - pos));
            }
            push(
                &mut out,
                Mapping {
                    file_offset: rs,
                    len: re - rs,
                    disk_offset: r.init.then(|| r.pblk * bs),
                    data: r.init,
                },
            );
            pos = re;
        }
        if pos < end {
            push(&mut out, hole(pos, end - pos));
        }
        Ok(out)
    }
}

fn hole(file_offset: u64, len: u64) -> Mapping {
    Mapping {
        file_offset,
        len,
        disk_offset: None,
        data: false,
    }
}
