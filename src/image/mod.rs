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
pub mod probe;
mod qcow2;
pub mod qcow2_bitmap;
mod raw;
mod vhd;
mod vhdx;
mod vmdk;
pub mod write;
mod write_qcow2;
mod write_vmdk;

pub use probe::{Format, Source};
pub use raw::RawImage;
pub use write::{create, DiskWriter, OutFormat};

pub use crate::blockdev::BlockRead;
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

/// A source disk: the guest-visible bytes and allocation ([`BlockRead`]), plus what a backup
/// records about where they came from.
pub trait DiskImage: BlockRead {
    /// "raw", "vmdk", "qcow2", …
    fn format(&self) -> &'static str;
    /// Identity of the source for change detection; None for block devices.
    fn stamp(&self) -> Option<SourceStamp>;
    /// Every host file the guest view is read from: extents, parents, backing files. A VM
    /// folder backup uses it to tell a disk from the pieces of another disk.
    fn files(&self) -> Vec<PathBuf>;
    /// A hint that the guest ranges `ranges` will be read soon: an image whose guest bytes
    /// lie at the same offsets of one file (raw) has the kernel start reading them. The
    /// default does nothing.
    fn will_need(&self, _ranges: &[Range<u64>]) {}
    /// The layers of a chain, top first: each layer's files and their combined stamp. A
    /// single file is one layer.
    fn layers(&self) -> Vec<Layer> {
        vec![Layer {
            files: self.files(),
            stamp: self.stamp(),
        }]
    }
    /// The ranges of `range` that the top layer itself holds (data, zeros or compressed
    /// clusters), as opposed to what shows through from the layers below. For an image
    /// that is not a chain, everything.
    fn top_layer(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let end = range.end.min(self.size());
        let mut v = Vec::new();
        if range.start < end {
            v.push(range.start..end);
        }
        Ok(v)
    }
}

/// One layer of a backing chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub files: Vec<PathBuf>,
    pub stamp: Option<SourceStamp>,
}

/// How deep a chain of backing files / parents may go; deeper means a loop or damage.
pub(crate) const MAX_CHAIN: usize = 64;

/// Largest guest size accepted: 64 PiB.
const MAX_SIZE: u64 = 1 << 56;

/// A source disk opened for backup, with how its format was decided.
pub struct Opened {
    pub image: Box<dyn DiskImage>,
    pub source: Source,
    /// Set when the content looked like another format than the one used.
    pub warning: Option<String>,
}

/// Where a backing chain is: the images above (canonical paths, to catch loops) and
/// whether backing files and extents may live outside the folder of the image naming them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chain {
    above: Vec<PathBuf>,
    allow_outside: bool,
}

/// Opens a source disk. Its format comes from `given` (`--format`), from the hypervisor's
/// configuration (`config`: a `.vmx` names it, so it is a VMDK), or from its name and
/// content agreeing; see [`probe`] for why content alone is never enough.
pub fn open_disk(
    path: &Path,
    given: Option<Format>,
    config: bool,
    allow_outside: bool,
) -> Result<Opened> {
    let choice = probe::choose(path, given.map(|f| (f, Source::Given)), config)?;
    let chain = Chain {
        above: Vec::new(),
        allow_outside,
    };
    Ok(Opened {
        image: open_format(path, choice.format, &chain)?,
        source: choice.source,
        warning: choice.warning,
    })
}

/// Opens an image whose name and content agree on its format (tests, tools).
pub fn open(path: &Path) -> Result<Box<dyn DiskImage>> {
    Ok(open_disk(path, None, false, false)?.image)
}

/// Opens `path` as `format`, below the images of `chain`.
pub(crate) fn open_format(
    path: &Path,
    format: Format,
    chain: &Chain,
) -> Result<Box<dyn DiskImage>> {
    let img: Box<dyn DiskImage> = match format {
        Format::Qcow2 => qcow2::open(path, chain)?,
        Format::Vmdk => vmdk::open(path, chain)?,
        Format::Vhd => vhd::open(path)?,
        Format::Vhdx => vhdx::open(path)?,
        Format::Raw => Box::new(RawImage::open(path)?),
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

/// `chain` with `path` appended: the chain for opening `path`'s backing file. Refuses a
/// file that is already above (a loop) and chains deeper than [`MAX_CHAIN`].
pub(crate) fn descend(path: &Path, chain: &Chain) -> Result<Chain> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.above.contains(&canon) {
        return Err(Error::Other(format!(
            "{}: the backing chain loops back to this file",
            path.display()
        )));
    }
    if chain.above.len() >= MAX_CHAIN {
        return Err(Error::Other(format!(
            "{}: the backing chain is deeper than {MAX_CHAIN} images",
            path.display()
        )));
    }
    let mut next = chain.clone();
    next.above.push(canon);
    Ok(next)
}

/// The file that image `referrer` names as `name` (a backing file, parent or extent):
/// relative names are relative to the referrer's folder, and the file must lie inside
/// that folder unless the user allowed otherwise, so an image cannot make a backup read
/// `/etc/shadow` or another VM's disk.
pub(crate) fn linked(referrer: &Path, name: &str, chain: &Chain) -> Result<PathBuf> {
    let p = host::relative_to(referrer, name);
    if chain.allow_outside {
        return Ok(p);
    }
    let dir = referrer
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (Ok(dir), Ok(target)) = (std::fs::canonicalize(dir), std::fs::canonicalize(&p)) else {
        return Ok(p); // opening it fails with a message naming it
    };
    if !target.starts_with(&dir) {
        return Err(Error::Usage(format!(
            "{} names {name} ({}), which is outside its folder {}; cairn follows backing files and extents only inside the folder of the image that names them. Pass --allow-backing-outside if this is intended",
            referrer.display(),
            target.display(),
            dir.display()
        )));
    }
    Ok(p)
}

/// Opens the backing file (or parent) `name` of `referrer`. Its format is what the
/// referrer records (qcow2's backing format extension, a VMDK delta's parent), else what
/// its name and content agree on; a backing file whose format cannot be told that way is
/// refused, since there is no `--format` for it.
pub(crate) fn open_backing(
    referrer: &Path,
    name: &str,
    format: Option<&str>,
    chain: &Chain,
) -> Result<Box<dyn DiskImage>> {
    let path = linked(referrer, name, chain)?;
    let given = match format {
        None | Some("") => None,
        Some(f) => Some((
            Format::parse(f).ok_or_else(|| {
                Error::Usage(format!(
                    "backing file {} has format {f}, which cairn does not read",
                    path.display()
                ))
            })?,
            Source::Referrer,
        )),
    };
    let choice = probe::choose(&path, given, false).map_err(|e| fix_backing_hint(e, referrer))?;
    if let Some(w) = choice.warning {
        return Err(Error::Usage(format!(
            "{w}. {} records no format for this backing file, so cairn cannot be told; record it with `qemu-img rebase -u -b {name} -F FORMAT {}`",
            referrer.display(),
            referrer.display()
        )));
    }
    open_format(&path, choice.format, chain)
}

/// A backing file has no `--format`: point at qemu-img instead.
fn fix_backing_hint(e: Error, referrer: &Path) -> Error {
    match e {
        Error::Usage(m) => Error::Usage(format!(
            "{m} (it is the backing file of {}; record its format with `qemu-img rebase -u -F`)",
            referrer.display()
        )),
        e => e,
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
