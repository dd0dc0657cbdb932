//! Disk image readers. Each presents the guest-visible disk as a byte range plus an
//! allocation map, so unallocated space is never read.
//!
//! - `raw`: raw files and block devices (allocation from SEEK_DATA / SEEK_HOLE).
//! - `qcow2`, `vmdk`, `vhd`, `vhdx`: native readers written from the public format
//!   specifications. Each only describes a guest range as extents (data at a host
//!   offset, compressed, zero, or "ask the backing image"); `layered` turns that into
//!   `allocated` / `read_at`, follows backing chains and VMDK parents, and reads
//!   contiguous clusters with one `pread`. `host` holds the bounds-checked reads: every
//!   offset and size taken from a file is checked before use, so damaged or truncated
//!   images give an error naming the file, never a panic or a wild read.
//!
//! [`open`] recognises the format from the first bytes (a fixed VHD, which has no header,
//! by the footer in its last sector).

mod host;
mod layered;
mod qcow2;
mod raw;
mod vhd;
mod vhdx;
mod vmdk;
pub mod write;
mod write_qcow2;
mod write_vmdk;

pub use raw::RawImage;
pub use write::{create, DiskWriter, OutFormat};

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What identifies an unchanged source file between two backups: if all of it matches the
/// parent snapshot's record, the disk's chunk tables are reused without reading it (the
/// "files cache" of restic and borg; `--force-read` turns it off). ctime cannot be set by
/// user tools, so a rewrite that restores mtime is still caught.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

pub trait DiskImage: Send + Sync {
    /// The guest-visible size in bytes.
    fn size(&self) -> u64;
    /// "raw", "vmdk", "qcow2", …
    fn format(&self) -> &'static str;
    /// Allocated ranges intersecting `range`, clipped to it, sorted and disjoint.
    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>>;
    /// Fills `buf` from guest offset `offset`; a short read is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Identity of the source for change detection; None for block devices.
    fn stamp(&self) -> Option<SourceStamp>;
    /// Every host file the guest view is read from: extents, parents, backing files. A VM
    /// folder backup uses it to tell a disk from the pieces of another disk.
    fn files(&self) -> Vec<PathBuf>;
}

/// How deep a chain of backing files / parents may go; deeper means a loop or damage.
pub(crate) const MAX_CHAIN: usize = 64;

/// Opens a disk image, recognising its format from its first bytes (and, for a fixed VHD,
/// which has no header, from the footer in its last 512 bytes).
pub fn open(path: &Path) -> Result<Box<dyn DiskImage>> {
    open_chain(path, &[])
}

/// The formats a file's first bytes (or a fixed VHD's footer) can say.
#[derive(Debug, PartialEq, Eq)]
enum Detected {
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
    Raw,
}

fn read_head(path: &Path) -> Result<(std::fs::File, [u8; 512], usize)> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening disk image {}", path.display()), e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok((f, head, n))
}

fn detect(path: &Path) -> Result<Detected> {
    let (f, head, n) = read_head(path)?;
    let head = &head[..n];
    let starts = |m: &[u8]| head.starts_with(m);
    if let Some(kind) = detect_unsupported(head) {
        return Err(Error::Usage(format!(
            "{} is a {kind} image; this cairn reads raw, qcow2, VMDK, VHD and VHDX images \
             and block devices. Convert it first: qemu-img convert -O qcow2 {} disk.qcow2",
            path.display(),
            path.display()
        )));
    }
    Ok(if starts(b"QFI\xfb") {
        Detected::Qcow2
    } else if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        Detected::Vmdk
    } else if starts(b"vhdxfile") {
        Detected::Vhdx
    } else if starts(b"conectix") || vhd::has_footer(&f) {
        Detected::Vhd
    } else {
        Detected::Raw
    })
}

/// True if `path` starts like a VMDK (sparse extent or descriptor).
pub(crate) fn looks_like_vmdk(path: &Path) -> bool {
    matches!(detect(path), Ok(Detected::Vmdk))
}

/// Opens an image below the images `above` (canonical paths) in a backing chain.
pub(crate) fn open_chain(path: &Path, above: &[PathBuf]) -> Result<Box<dyn DiskImage>> {
    let img: Box<dyn DiskImage> = match detect(path)? {
        Detected::Qcow2 => qcow2::open(path, above)?,
        Detected::Vmdk => vmdk::open(path, above)?,
        Detected::Vhd => vhd::open(path)?,
        Detected::Vhdx => vhdx::open(path)?,
        Detected::Raw => Box::new(RawImage::open(path)?),
    };
    // No format allows more (qcow2 tops out at 2^56 bytes of host offsets, VHDX at
    // 64 TiB); a bigger size is a damaged header, and refusing it keeps every guest
    // offset far from u64 overflow in the readers.
    if img.size() > MAX_SIZE {
        return Err(Error::Other(format!(
            "{}: the {} header gives a disk size of {} bytes, which is impossible (damaged header?)",
            path.display(),
            img.format(),
            img.size()
        )));
    }
    Ok(img)
}

/// `above` with `path` appended: the chain for opening `path`'s backing file. Refuses a
/// file that is already above (a loop) and chains deeper than [`MAX_CHAIN`].
pub(crate) fn descend(path: &Path, above: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if above.contains(&canon) {
        return Err(Error::Other(format!(
            "{}: the backing chain loops back to this file",
            path.display()
        )));
    }
    if above.len() >= MAX_CHAIN {
        return Err(Error::Other(format!(
            "{}: the backing chain is deeper than {MAX_CHAIN} images",
            path.display()
        )));
    }
    let mut next = above.to_vec();
    next.push(canon);
    Ok(next)
}

/// Largest guest size accepted: 64 PiB.
const MAX_SIZE: u64 = 1 << 56;

/// Opens a backing file; `format` is what the referring image says it is (qcow2's backing
/// format extension), and wins over detection the way it does in qemu: a backing file
/// declared raw is read raw even if its content looks like another format.
pub(crate) fn open_backing(
    path: &Path,
    format: Option<&str>,
    above: &[PathBuf],
) -> Result<Box<dyn DiskImage>> {
    let want = match format {
        None | Some("") => return open_chain(path, above),
        Some("raw") | Some("file") | Some("host_device") => {
            return Ok(Box::new(RawImage::open(path)?))
        }
        Some("qcow2") => Detected::Qcow2,
        Some("vmdk") => Detected::Vmdk,
        Some("vpc") => Detected::Vhd,
        Some("vhdx") => Detected::Vhdx,
        Some(other) => {
            return Err(Error::Usage(format!(
                "backing file {} has format {other}, which cairn does not read",
                path.display()
            )))
        }
    };
    let found = detect(path)?;
    if found != want {
        return Err(Error::Other(format!(
            "backing file {} is declared {} but looks like {found:?}",
            path.display(),
            format.unwrap_or_default()
        )));
    }
    open_chain(path, above)
}

/// Formats recognised only to be refused by name.
fn detect_unsupported(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"QED\0") {
        Some("QED")
    } else if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        Some("Parallels")
    } else if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VDI")
    } else if starts(b"QFI\xfb") && head.get(4..8).is_some_and(|v| v == [0, 0, 0, 1]) {
        Some("qcow (version 1)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> bool {
        Command::new("qemu-img")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Opens and reads `path` the way a backup does, over at most the first 64 MiB.
    fn exercise(path: &Path) -> Result<()> {
        let img = open(path)?;
        let end = img.size().min(64 << 20);
        let mut budget = 4usize << 20;
        for r in img.allocated(0..end)? {
            let len = ((r.end - r.start) as usize).min(budget);
            if len == 0 {
                break;
            }
            let mut buf = vec![0u8; len];
            img.read_at(r.start, &mut buf)?;
            budget -= len;
        }
        let _ = img.stamp();
        Ok(())
    }

    /// Real images made by qemu-img, with bytes of their metadata overwritten at random:
    /// every reader must answer with Ok or an error, never a panic, a hang or a huge
    /// allocation.
    #[test]
    fn damaged_metadata_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        {
            let f = std::fs::File::create(&raw).unwrap();
            f.set_len(8 << 20).unwrap();
            let mut s = 0x1234_5678_9abc_def1u64;
            let mut data = vec![0u8; 1 << 20];
            for b in data.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
            f.write_all_at(&data, 0).unwrap();
            f.write_all_at(&data[..300_000], 5 << 20).unwrap();
        }
        let kinds: [(&str, &[&str]); 7] = [
            ("q.qcow2", &["-O", "qcow2"]),
            (
                "z.qcow2",
                &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
            ),
            (
                "s.vmdk",
                &["-O", "vmdk", "-o", "subformat=monolithicSparse"],
            ),
            ("o.vmdk", &["-O", "vmdk", "-o", "subformat=streamOptimized"]),
            ("d.vhd", &["-O", "vpc", "-o", "subformat=dynamic"]),
            ("f.vhd", &["-O", "vpc", "-o", "subformat=fixed"]),
            ("d.vhdx", &["-O", "vhdx", "-o", "subformat=dynamic"]),
        ];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (name, opts) in kinds {
            let img = dir.path().join(name);
            let mut args = vec!["convert", "-q", "-f", "raw"];
            args.extend_from_slice(opts);
            args.extend([raw.to_str().unwrap(), img.to_str().unwrap()]);
            if !qemu_img(&args) {
                eprintln!("qemu-img cannot make {name}; skipped");
                continue;
            }
            exercise(&img).unwrap_or_else(|e| panic!("{name} undamaged: {e}"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let len = f.metadata().unwrap().len();
            for _ in 0..300 {
                // Mostly the metadata at the start (headers, tables), some at the end
                // (footers), some anywhere.
                let at = match next() % 8 {
                    0..=4 => next() % len.min(320 << 10),
                    5 => len - 1 - next() % len.min(2048),
                    _ => next() % len,
                };
                let n = 1 + (next() % 8) as usize;
                let mut old = vec![0u8; n];
                let got = f.read_at(&mut old, at).unwrap();
                let new: Vec<u8> = (0..got)
                    .map(|_| match next() % 4 {
                        0 => 0,
                        1 => 0xff,
                        _ => next() as u8,
                    })
                    .collect();
                f.write_all_at(&new, at).unwrap();
                let _ = exercise(&img);
                f.write_all_at(&old[..got], at).unwrap();
            }
        }
    }
}
