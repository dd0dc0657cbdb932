//! Raw images and block devices. Allocation comes from SEEK_DATA/SEEK_HOLE, so a sparse
//! image's holes are never read; filesystems or devices without it report all as data.

use super::{DiskImage, SourceStamp};
use crate::{Error, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    stamp: Option<SourceStamp>,
}

impl RawImage {
    pub fn open(path: &Path) -> Result<RawImage> {
        let err = |e| Error::io(format!("opening disk image {}", path.display()), e);
        let mut file = File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let block = meta.file_type().is_block_device();
        let size = if block {
            file.seek(SeekFrom::End(0)).map_err(err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(Error::Usage(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        let stamp = (!block).then(|| SourceStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        });
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
            stamp,
        })
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> Option<u64> {
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        let mut pos = range.start;
        while pos < range.end {
            let Some(data) = self.seek(pos, libc::SEEK_DATA) else {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if errno == Some(libc::ENXIO) {
                    break; // no data after pos
                }
                // SEEK_DATA unsupported here: everything counts as data.
                return Ok(vec![range]);
            };
            if data >= range.end {
                break;
            }
            let hole = self.seek(data, libc::SEEK_HOLE).unwrap_or(range.end);
            let end = hole.min(range.end);
            if end > data {
                out.push(data..end);
            }
            pos = end;
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Other(format!(
                    "disk image {} shrank while being read: {} bytes at offset {offset} are gone \
                     (it had {} bytes when the backup started). Back up from a frozen snapshot; \
                     nothing was committed",
                    self.path.display(),
                    buf.len(),
                    self.size
                ))
            } else {
                Error::io(
                    format!(
                        "reading disk image {} at offset {offset}",
                        self.path.display()
                    ),
                    e,
                )
            }
        })
    }

    fn stamp(&self) -> Option<SourceStamp> {
        self.stamp
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_allocation_map() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let img = RawImage::open(&p).unwrap();
        assert_eq!(img.size(), 64 << 20);
        let a = img.allocated(0..64 << 20).unwrap();
        // tmpfs and ext4 report the written MiB exactly; some filesystems round.
        assert!(
            a.iter().any(|r| r.start <= 8 << 20 && r.end >= 9 << 20),
            "{a:?}"
        );
        let total: u64 = a.iter().map(|r| r.end - r.start).sum();
        assert!(total < 16 << 20, "holes were reported as data: {a:?}");
        assert_eq!(img.allocated(0..4 << 20).unwrap(), vec![]);
        let mut buf = vec![0u8; 10];
        assert!(img.read_at((64 << 20) - 5, &mut buf).is_err());
    }
}
