//! The host files an image is made of, and the checked reads every format parser uses.
//!
//! Every number that comes out of an image file (an offset, a table size, a count) is
//! untrusted: reads go through [`HostFile::read_exact_at`], which turns a read past the end
//! of the file into an error naming the file and the structure ("truncated?") instead of a
//! short buffer, and the byte decoders below never index out of bounds.

use super::SourceStamp;
use crate::{Error, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Largest metadata table any parser loads in one piece (an L1 table, a grain directory).
/// Real images stay far below it; a damaged header asking for more is refused instead of
/// allocating whatever it says.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One file of an image: the image itself, an extent, a descriptor's data file.
pub(super) struct HostFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// Device and inode, to notice one file named twice.
    id: (u64, u64),
    /// None for block devices, which have no trustworthy change time.
    stamp: Option<SourceStamp>,
}

impl HostFile {
    /// Opens a regular file or a block device (oVirt keeps qcow2 images on logical
    /// volumes).
    pub fn open(path: &Path) -> Result<HostFile> {
        let err = |e| Error::io(format!("opening disk image {}", path.display()), e);
        let mut file = File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let block = meta.file_type().is_block_device();
        let len = if block {
            file.seek(SeekFrom::End(0)).map_err(err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(Error::Usage(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(HostFile {
            file,
            path: path.to_path_buf(),
            len,
            id: (meta.dev(), meta.ino()),
            stamp: (!block).then(|| SourceStamp {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            }),
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn same_file(&self, other: &HostFile) -> bool {
        self.id == other.id
    }

    pub fn stamp(&self) -> Option<SourceStamp> {
        self.stamp
    }

    /// An error about damaged content of this file.
    pub fn bad(&self, detail: impl std::fmt::Display) -> Error {
        Error::Other(format!("{}: {detail}", self.path.display()))
    }

    /// An error about a feature this reader does not implement (exit code 2: nothing is
    /// wrong with the file, the user has to convert it).
    pub fn unsupported(&self, detail: impl std::fmt::Display) -> Error {
        Error::Usage(format!("{}: {detail}", self.path.display()))
    }

    /// Reads exactly `buf.len()` bytes at `offset`. `what` names the structure for the
    /// error: a read that would pass the end of the file says so.
    pub fn read_exact_at(
        &self,
        offset: u64,
        buf: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(self.bad(format_args!(
                "{} (bytes {offset}..{}) lies past the end of the file at {} bytes (truncated?)",
                what(),
                offset.saturating_add(buf.len() as u64),
                self.len
            )));
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad(format_args!(
                    "{} at offset {offset}: the file shrank while being read; back up from a \
                     frozen snapshot. Nothing was committed",
                    what()
                ))
            } else {
                Error::io(
                    format!(
                        "reading {} of {} at offset {offset}",
                        what(),
                        self.path.display()
                    ),
                    e,
                )
            }
        })
    }

    /// Reads `len` bytes at `offset` into a new buffer; `len` is checked against the file
    /// length before anything is allocated.
    pub fn read_vec(&self, offset: u64, len: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        if len > MAX_TABLE_BYTES {
            return Err(self.bad(format_args!(
                "{} claims {len} bytes, more than any sane image needs (damaged header?)",
                what()
            )));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(self.bad(format_args!(
                "{} (bytes {offset}..{}) lies past the end of the file at {} bytes (truncated?)",
                what(),
                offset.saturating_add(len),
                self.len
            )));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact_at(offset, &mut v, what)?;
        Ok(v)
    }

    /// The parts of `range` (host offsets) that hold data according to SEEK_DATA /
    /// SEEK_HOLE, so sparse host files are not read where they hold nothing. Falls back to
    /// "all data" where the filesystem cannot tell.
    pub fn data_ranges(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let seek = |off: u64, whence| {
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), off as libc::off_t, whence) };
            (r >= 0).then_some(r as u64)
        };
        let mut out = Vec::new();
        let mut pos = range.start;
        while pos < range.end {
            let Some(data) = seek(pos, libc::SEEK_DATA) else {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return vec![range];
            };
            if data >= range.end {
                break;
            }
            let end = seek(data, libc::SEEK_HOLE)
                .unwrap_or(range.end)
                .min(range.end);
            if end <= data {
                // Should not happen; do not loop forever on a confused filesystem.
                out.push(data..range.end);
                break;
            }
            out.push(data..end);
            pos = end;
        }
        out
    }
}

/// Change-detection identity of an image made of several files (descriptor and extents,
/// or a backing chain): the top file's device, inode and size, and the newest mtime and
/// ctime of all of them; None if any of them has none (a block device), so such an image
/// is always read.
///
/// Why not the sum of the sizes: the backup compares `stamp.size` with the top file's
/// length after reading to catch images that shrink mid-read, so it must stay the top
/// file's length. Any write to any member bumps that member's mtime and ctime to "now",
/// which is later than every time recorded before, so the maximum changes; replacing a
/// member by another file (rename) changes its ctime the same way.
pub(super) fn combine_stamps(
    top: Option<SourceStamp>,
    others: impl IntoIterator<Item = Option<SourceStamp>>,
) -> Option<SourceStamp> {
    let mut s = top?;
    for o in others {
        let o = o?;
        s.mtime_ns = s.mtime_ns.max(o.mtime_ns);
        s.ctime_ns = s.ctime_ns.max(o.ctime_ns);
    }
    Some(s)
}

/// A path named inside an image (backing file, extent, parent), resolved against the
/// folder of the file that names it, as qemu and VMware do.
pub(super) fn relative_to(referrer: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        referrer.parent().unwrap_or(Path::new("")).join(p)
    }
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = at.checked_add(N).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    a
}

/// Byte decoders that read zero past the end of `b` instead of panicking; callers size
/// their buffers so that never happens for a valid layout.
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(b, at))
}
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(b, at))
}
pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array(b, at))
}
pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(b, at))
}
pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(b, at))
}
pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(b, at))
}

/// CRC-32C (Castagnoli), the checksum of VHDX headers and region tables.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn decoders_never_panic() {
        let b = [1u8, 2, 3];
        assert_eq!(be16(&b, 1), 0x0203);
        assert_eq!(be32(&b, 1), 0);
        assert_eq!(le64(&b, usize::MAX), 0);
    }

    #[test]
    fn reads_past_the_end_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, [0u8; 100]).unwrap();
        let f = HostFile::open(&p).unwrap();
        let mut buf = [0u8; 10];
        let e = f
            .read_exact_at(95, &mut buf, &|| "grain table 3".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.img") && e.contains("grain table 3") && e.contains("truncated"));
        assert!(f
            .read_exact_at(u64::MAX - 2, &mut buf, &|| "x".into())
            .is_err());
        assert!(f.read_vec(0, 1 << 40, &|| "L1 table".into()).is_err());
        assert_eq!(
            relative_to(Path::new("/a/b/c.vmdk"), "d.vmdk"),
            Path::new("/a/b/d.vmdk")
        );
        assert_eq!(
            relative_to(Path::new("c.vmdk"), "/d.vmdk"),
            Path::new("/d.vmdk")
        );
    }
}
