//! File content: reads and block maps of regular files through their extents, and
//! symlink targets (inline in the inode, or in "remote" blocks that on v5 filesystems
//! start with an `XSLM` header each).

use super::be::{guest, Be};
use super::bmap::{self, Extent};
use super::inode::{Inode, FMT_DEV, FMT_LOCAL};
use super::sb::Superblock;
use crate::blockdev::BlockRead;
use crate::fs::Mapping;
use crate::{Error, Result};

const XSLM_MAGIC: u32 = 0x5853_4c4d; // "XSLM"
const SYMLINK_HDR: usize = 56;
/// Longest symlink target XFS stores (`XFS_SYMLINK_MAXLEN`).
const SYMLINK_MAXLEN: u64 = 1024;

/// The refusal for files whose data is on the realtime device.
pub(super) fn realtime(ino: u64) -> Error {
    Error::Unsupported(format!(
        "XFS: inode {ino}: its data is on the XFS realtime device, which is not supported"
    ))
}

/// Reads `buf.len()` bytes (fewer at the end of the file) at byte `offset`: extents are
/// copied, holes and unwritten extents read as zeros.
pub(super) fn read(
    dev: &dyn BlockRead,
    sb: &Superblock,
    inode: &Inode,
    exts: &[Extent],
    offset: u64,
    buf: &mut [u8],
) -> Result<usize> {
    if offset >= inode.size {
        return Ok(0);
    }
    let n = (inode.size - offset).min(buf.len() as u64) as usize;
    let buf = &mut buf[..n];
    if inode.format == FMT_LOCAL {
        let data = inode.local_data()?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + n]);
        return Ok(n);
    }
    buf.fill(0);
    let bs = sb.blocksize as u64;
    let end = offset + n as u64;
    for e in &exts[bmap::find(exts, offset / bs)..] {
        let e_start = e.off.saturating_mul(bs);
        if e_start >= end {
            break;
        }
        let s = e_start.max(offset);
        let t = e.end().saturating_mul(bs).min(end);
        if e.unwritten || s >= t {
            continue;
        }
        let disk = sb.extent_offset(e.start, e.len)? + (s - e_start);
        dev.read_at(disk, &mut buf[(s - offset) as usize..(t - offset) as usize])?;
    }
    Ok(n)
}

/// The data fork as volume byte ranges, holes between extents included, covering
/// `0..size` (extents wholly past the last block of `size`, which XFS preallocates
/// speculatively, are left out).
pub(super) fn map(sb: &Superblock, inode: &Inode, exts: &[Extent]) -> Result<Vec<Mapping>> {
    let size = inode.size;
    match inode.format {
        FMT_DEV => return Ok(Vec::new()),
        FMT_LOCAL => {
            return Ok(if size == 0 {
                Vec::new()
            } else {
                vec![Mapping {
                    file_offset: 0,
                    len: size,
                    disk_offset: None,
                    data: true,
                }]
            })
        }
        _ => {}
    }
    let bs = sb.blocksize as u64;
    let limit = size.div_ceil(bs).saturating_mul(bs);
    let mut out = Vec::new();
    let mut pos = 0u64;
    for e in exts {
        let s = e.off.saturating_mul(bs);
        if s >= limit {
            break;
        }
        if s > pos {
            out.push(Mapping {
                file_offset: pos,
                len: s - pos,
                disk_offset: None,
                data: false,
            });
        }
        let t = e.end().saturating_mul(bs).min(limit);
        out.push(Mapping {
            file_offset: s,
            len: t - s,
            disk_offset: Some(sb.extent_offset(e.start, e.len)?),
            data: !e.unwritten,
        });
        pos = t;
    }
    if pos < size {
        out.push(Mapping {
            file_offset: pos,
            len: size - pos,
            disk_offset: None,
            data: false,
        });
    }
    Ok(out)
}

/// True if the first `len` bytes of `raw` can be a header-less target: no NUL in them.
fn raw_target(raw: &[u8], len: usize) -> bool {
    raw.get(..len).is_some_and(|t| !t.contains(&0))
}

/// The target of symlink `inode`.
pub(super) fn read_link(
    dev: &dyn BlockRead,
    sb: &Superblock,
    inode: &Inode,
    exts: impl FnOnce() -> Result<std::sync::Arc<Vec<Extent>>>,
) -> Result<Vec<u8>> {
    let ino = inode.ino;
    let size = inode.size;
    if size == 0 || size > SYMLINK_MAXLEN {
        return Err(guest(format!("symlink {ino}: target of {size} bytes")));
    }
    if inode.format == FMT_LOCAL {
        return Ok(inode.local_data()?.to_vec());
    }
    let exts = exts()?;
    let bs = sb.blocksize as u64;
    // The kernel writes one header per extent (not per block), and sizes the target's
    // blocks as if each had one.
    let room = if sb.features.crc {
        bs - SYMLINK_HDR as u64
    } else {
        bs
    };
    let blocks = size.div_ceil(room);
    let mut out = Vec::with_capacity(size as usize);
    let mut fb = 0u64;
    while fb < blocks && out.len() < size as usize {
        let e = exts
            .get(bmap::find(&exts, fb))
            .filter(|e| e.off <= fb)
            .ok_or_else(|| guest(format!("symlink {ino}: block {fb} is not mapped")))?;
        let n = e.end().min(blocks) - fb;
        let raw = bmap::read_blocks(dev, sb, ino, &exts, fb, n)?;
        let left = size as usize - out.len();
        let r = Be::new(&raw, "XFS: symlink block");
        if !sb.features.crc || (fb == 0 && r.u32(0)? != XSLM_MAGIC && raw_target(&raw, left)) {
            // v4 blocks are plain bytes; so are v5 ones written by mkfs.xfs -p of
            // xfsprogs 6.1, which leaves out the header (the kernel refuses those).
            out.extend_from_slice(&raw[..left.min(raw.len())]);
            fb += n;
            continue;
        }
        let (magic, off, bytes, owner) = (r.u32(0)?, r.u32(4)?, r.u32(8)?, r.u64(32)?);
        if magic != XSLM_MAGIC || owner != ino {
            return Err(guest(format!(
                "symlink {ino}: block {fb} has no XSLM header of this inode"
            )));
        }
        let bytes = bytes as usize;
        if off as usize != out.len()
            || bytes == 0
            || bytes > raw.len() - SYMLINK_HDR
            || bytes > left
        {
            return Err(guest(format!(
                "symlink {ino}: block {fb} holds {bytes} bytes at {off}, expected up to {left} at {}",
                out.len()
            )));
        }
        out.extend_from_slice(r.bytes(SYMLINK_HDR, bytes)?);
        fb += n;
    }
    if out.len() as u64 != size {
        return Err(guest(format!(
            "symlink {ino}: blocks hold {} of the {size} target bytes",
            out.len()
        )));
    }
    Ok(out)
}
