//! Disk image readers. Each presents the guest-visible disk as a byte range plus an
//! allocation map, so unallocated space is never read.

mod raw;

pub use raw::RawImage;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

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
}

/// Opens a disk image, recognising its format from its first bytes.
pub fn open(path: &Path) -> Result<Box<dyn DiskImage>> {
    let mut head = [0u8; 512];
    let n = {
        use std::io::Read;
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
        n
    };
    if let Some(kind) = detect_unsupported(&head[..n]) {
        return Err(Error::Usage(format!(
            "{} is a {kind} image; this cairn reads raw images and block devices only. \
             Convert it first: qemu-img convert -O raw {} disk.img",
            path.display(),
            path.display()
        )));
    }
    Ok(Box::new(RawImage::open(path)?))
}

fn detect_unsupported(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"QFI\xfb") {
        Some("qcow2")
    } else if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        Some("VMDK")
    } else if starts(b"vhdxfile") {
        Some("VHDX")
    } else if starts(b"conectix") {
        Some("VHD")
    } else {
        None
    }
}
