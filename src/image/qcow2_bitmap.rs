//! qcow2 persistent dirty bitmaps (the "bitmaps" header extension of the qcow2 spec), read
//! natively so a backup can read only the clusters written since the bitmap was added.
//!
//! A bitmap is trusted only when qemu says it is consistent: the extension's autoclear bit
//! must be set (an older qemu that opened the image without knowing bitmaps clears it), and
//! the bitmap must not be `in_use` (qemu sets that while it runs the guest and clears it on
//! a clean close: after a crash it stays set and the bitmap may have missed writes).

use super::host::{be16, be32, be64, HostFile};
use crate::{Error, Result};
use std::ops::Range;
use std::path::Path;

const EXT_BITMAPS: u32 = 0x2385_2875;
const AUTOCLEAR_BITMAPS: u64 = 1;
const FLAG_IN_USE: u32 = 1;
const TYPE_DIRTY: u8 = 1;
/// More than qemu allows (BME_MAX_TABLE_SIZE).
const MAX_TABLE: u64 = 0x800_0000;
/// Ranges kept at most; a bitmap more fragmented than this is read as "all changed".
const MAX_RANGES: usize = 1 << 22;

/// The dirty areas of a bitmap, in guest bytes.
pub struct DirtyBitmap {
    pub name: String,
    pub granularity: u64,
    pub ranges: Vec<Range<u64>>,
}

/// Reads the persistent dirty bitmap `name` of the qcow2 image at `path`.
pub fn read(path: &Path, name: &str) -> Result<DirtyBitmap> {
    let file = HostFile::open(path)?;
    let mut h = [0u8; 104];
    let n = (h.len() as u64).min(file.len()) as usize;
    file.read_exact_at(0, &mut h[..n], &|| "qcow2 header".into())?;
    if n < 104 || &h[0..4] != b"QFI\xfb" || be32(&h, 4) != 3 {
        return Err(Error::Usage(format!(
            "{} is not a qcow2 version 3 image; only those have persistent bitmaps",
            path.display()
        )));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(file.bad("cluster_bits is invalid"));
    }
    let cluster = 1u64 << cluster_bits;
    let size = be64(&h, 24);
    let autoclear = be64(&h, 88);
    let header_len = be32(&h, 100) as u64;
    let ext = super::qcow2::extensions(&file, cluster, header_len)?
        .into_iter()
        .find(|e| e.0 == EXT_BITMAPS)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{} has no persistent bitmaps (add one with `qemu-img bitmap --add {} NAME`)",
                path.display(),
                path.display()
            ))
        })?;
    if autoclear & AUTOCLEAR_BITMAPS == 0 {
        return Err(Error::Other(format!(
            "the bitmaps of {} are inconsistent (an older qemu opened the image since); \
             they cannot be trusted",
            path.display()
        )));
    }
    let e = file.read_vec(ext.1, ext.2.min(64), &|| "bitmaps extension".into())?;
    if e.len() < 24 {
        return Err(file.bad("bitmaps extension is too short"));
    }
    let count = be32(&e, 0) as u64;
    let dir_size = be64(&e, 8);
    let dir_offset = be64(&e, 16);
    let dir = file.read_vec(dir_offset, dir_size.min(64 << 20), &|| {
        "bitmap directory".into()
    })?;
    let mut pos = 0usize;
    let mut names = Vec::new();
    for _ in 0..count.min(65535) {
        let fixed = dir
            .get(pos..pos + 24)
            .ok_or_else(|| file.bad("bitmap directory is truncated"))?;
        let table_offset = be64(fixed, 0);
        let table_size = be32(fixed, 8) as u64;
        let flags = be32(fixed, 12);
        let ty = fixed[16];
        let gran_bits = fixed[17] as u32;
        let name_size = be16(fixed, 18) as usize;
        let extra = be32(fixed, 20) as usize;
        let name_at = pos + 24 + extra;
        let this = dir
            .get(name_at..name_at + name_size)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| file.bad("bitmap directory entry is truncated"))?;
        pos = (name_at + name_size).div_ceil(8) * 8;
        if this != name {
            names.push(this);
            continue;
        }
        if flags & FLAG_IN_USE != 0 {
            return Err(Error::Other(format!(
                "bitmap {name} of {} is in use: qemu is running the guest, or it stopped \
                 without closing the image, so the bitmap may have missed writes and cannot \
                 be trusted",
                path.display()
            )));
        }
        if ty != TYPE_DIRTY {
            return Err(file.unsupported(format_args!("bitmap {name} has unknown type {ty}")));
        }
        if !(9..=31).contains(&gran_bits) || table_size > MAX_TABLE {
            return Err(file.bad(format_args!("bitmap {name} has an invalid geometry")));
        }
        let granularity = 1u64 << gran_bits;
        let ranges = read_table(
            &file,
            table_offset,
            table_size,
            cluster,
            granularity,
            size,
            name,
        )?;
        return Ok(DirtyBitmap {
            name: name.to_string(),
            granularity,
            ranges,
        });
    }
    Err(Error::Usage(format!(
        "{} has no bitmap named {name}; it has {names:?}",
        path.display()
    )))
}

/// Turns the bitmap table and its data clusters into merged guest ranges.
fn read_table(
    file: &HostFile,
    offset: u64,
    entries: u64,
    cluster: u64,
    granularity: u64,
    size: u64,
    name: &str,
) -> Result<Vec<Range<u64>>> {
    let bits_per_cluster = cluster * 8;
    let needed = size.div_ceil(granularity).div_ceil(bits_per_cluster);
    if entries < needed {
        return Err(file.bad(format_args!(
            "bitmap {name}: its table has {entries} entries, the disk needs {needed}"
        )));
    }
    let table = file.read_vec(offset, needed * 8, &|| format!("bitmap {name} table"))?;
    let mut out: Vec<Range<u64>> = Vec::new();
    let add = |r: Range<u64>, out: &mut Vec<Range<u64>>| -> Result<()> {
        let r = r.start.min(size)..r.end.min(size);
        if r.start >= r.end {
            return Ok(());
        }
        match out.last_mut() {
            Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
            _ => {
                if out.len() >= MAX_RANGES {
                    return Err(Error::Other(format!(
                        "bitmap {name} is too fragmented to use (over {MAX_RANGES} ranges)"
                    )));
                }
                out.push(r)
            }
        }
        Ok(())
    };
    let per_entry = bits_per_cluster * granularity;
    for (i, e) in table.chunks_exact(8).map(|c| be64(c, 0)).enumerate() {
        let base = i as u64 * per_entry;
        let host = e & 0x00ff_ffff_ffff_fe00;
        if host == 0 {
            if e & 1 != 0 {
                add(base..base + per_entry, &mut out)?;
            }
            continue;
        }
        let data = file.read_vec(host, cluster, &|| format!("bitmap {name} data"))?;
        for (byte_i, &b) in data.iter().enumerate() {
            if b == 0 {
                continue;
            }
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    let idx = byte_i as u64 * 8 + bit;
                    let s = base + idx * granularity;
                    add(s..s + granularity, &mut out)?;
                }
            }
        }
    }
    Ok(out)
}
