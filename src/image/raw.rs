//! Raw images and block devices. Allocation comes from SEEK_DATA/SEEK_HOLE, so a sparse
//! image's holes are never read; filesystems or devices without it report all as data.

use super::host::HostFile;
use super::{DiskImage, SourceStamp};
use crate::blockdev::BlockRead;
use crate::{Error, Result};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct RawImage {
    host: HostFile,
}

impl RawImage {
    pub fn open(path: &Path) -> Result<RawImage> {
        let host = HostFile::open(path)?;
        // One pass from start to end: let the kernel read ahead generously.
        unsafe {
            libc::posix_fadvise(host.file().as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(RawImage { host })
    }
}

impl RawImage {
    fn shrank(&self, offset: u64, len: usize) -> String {
        format!(
            "disk image {} shrank while being read: {len} bytes at offset {offset} are gone \
             (it had {} bytes when the backup started). Back up from a frozen snapshot; \
             nothing was committed",
            self.host.path().display(),
            self.host.len()
        )
    }
}

impl BlockRead for RawImage {
    fn size(&self) -> u64 {
        self.host.len()
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        Ok(self.host.data_ranges(range))
    }

    fn map(&self, range: Range<u64>) -> Option<crate::mapping::Mapping> {
        if range.end > self.host.len() {
            return None;
        }
        let len = usize::try_from(range.end - range.start).ok()?;
        let what = format!(
            "{} (if it did not shrink, its storage failed a read)",
            self.shrank(range.start, len)
        );
        crate::mapping::Mapping::new(self.host.file(), range.start, len, what)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.host.file().read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Other(self.shrank(offset, buf.len()))
            } else {
                Error::io(
                    format!(
                        "reading disk image {} at offset {offset}",
                        self.host.path().display()
                    ),
                    e,
                )
            }
        })
    }
}

impl DiskImage for RawImage {
    fn format(&self) -> &'static str {
        "raw"
    }

    fn stamp(&self) -> Option<SourceStamp> {
        self.host.stamp()
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.host.path().to_path_buf()]
    }

    fn will_need(&self, ranges: &[Range<u64>]) {
        let fd = self.host.file().as_raw_fd();
        for r in ranges {
            // Holes need no reading; the rest starts reading in the background.
            for a in self.host.data_ranges(r.clone()) {
                let (Ok(off), Ok(len)) = (
                    libc::off_t::try_from(a.start),
                    libc::off_t::try_from(a.end - a.start),
                ) else {
                    continue;
                };
                // SAFETY: a plain system call on a descriptor this image owns; the
                // kernel only reads the hint.
                unsafe {
                    libc::posix_fadvise(fd, off, len, libc::POSIX_FADV_WILLNEED);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};

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

    /// Pages of `f` in `range` that are in the page cache (mincore over a mapping).
    fn resident(f: &File, range: Range<u64>) -> usize {
        let page = 4096u64;
        let len = (range.end - range.start) as usize;
        let m = crate::mapping::Mapping::new(f, range.start, len, String::new()).unwrap();
        let mut v = vec![0u8; len.div_ceil(page as usize)];
        // SAFETY: the mapping covers `len` bytes and `v` has one byte per page of it.
        let rc =
            unsafe { libc::mincore(m.bytes().as_ptr() as *mut libc::c_void, len, v.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn will_need_starts_reading_the_ranges() {
        // On disk (not tmpfs, whose pages cannot be dropped): beside the build if it can.
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let dir = tempfile::tempdir_in(&target)
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let p = dir.path().join("d.img");
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![7u8; 8 << 20]).unwrap();
        f.sync_all().unwrap();
        // SAFETY: a hint on a descriptor this test owns.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let img = RawImage::open(&p).unwrap();
        let want = 1u64 << 20..3 << 20;
        if resident(img.host.file(), want.clone()) > 0 {
            eprintln!("SKIPPED: this filesystem keeps the test file's pages cached; cannot tell");
            return;
        }
        img.will_need(std::slice::from_ref(&want));
        let pages = ((want.end - want.start) / 4096) as usize;
        let t = std::time::Instant::now();
        while resident(img.host.file(), want.clone()) < pages {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "the hinted range was not read: {} of {pages} pages cached",
                resident(img.host.file(), want.clone())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Only what was asked for.
        assert_eq!(resident(img.host.file(), 6 << 20..8 << 20), 0);
    }
}
