//! The mutation run `fuzz_partition`: partitions are exposed as the files of a flat
//! directory so `testutil::mutate` can open and read them, over a GPT image (also with its
//! CRCs recomputed after each mutation, so damage reaches the entry parser) and an MBR
//! image with logical partitions.

use super::tests::{open, sfdisk_image, GPT_SCRIPT, MBR_SCRIPT};
use super::*;
use crate::blockdev::Slice;
use crate::fs::testutil::{self, have};
use crate::fs::{DirEntry, FileType, Filesystem, Ino, Mapping, Meta, Time};
use std::sync::Arc;

/// Partitions as files of a flat directory, so `testutil::mutate` can open and read them.
struct PartFs {
    parts: Vec<(Partition, Arc<dyn BlockRead>)>,
}

impl PartFs {
    fn open(dev: Arc<dyn BlockRead>) -> Result<Arc<dyn Filesystem>> {
        let t = read(dev.as_ref())?.ok_or_else(|| crate::Error::Guest("no table".into()))?;
        let mut parts = Vec::new();
        for p in t.partitions {
            let s = Slice::new(dev.clone(), p.start, p.len, "partition")?;
            parts.push((p, Arc::new(s) as Arc<dyn BlockRead>));
        }
        Ok(Arc::new(PartFs { parts }))
    }

    fn part(&self, ino: Ino) -> Result<&(Partition, Arc<dyn BlockRead>)> {
        (ino as usize)
            .checked_sub(1)
            .and_then(|i| self.parts.get(i))
            .ok_or_else(|| crate::Error::Guest("no such partition".into()))
    }
}

impl Filesystem for PartFs {
    fn kind(&self) -> &'static str {
        "partitions"
    }
    fn label(&self) -> Option<String> {
        None
    }
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    fn root(&self) -> Ino {
        0
    }
    fn stat(&self, ino: Ino) -> Result<Meta> {
        let (kind, size) = if ino == 0 {
            (FileType::Dir, 0)
        } else {
            (FileType::File, self.part(ino)?.0.len)
        };
        Ok(Meta {
            ino,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            mtime: Time::default(),
            atime: Time::default(),
            ctime: Time::default(),
            rdev: None,
            owner: None,
        })
    }
    fn read_dir(&self, _ino: Ino) -> Result<Vec<DirEntry>> {
        Ok((0..self.parts.len())
            .map(|i| DirEntry {
                name: format!("p{}", self.parts[i].0.number).into_bytes(),
                ino: i as u64 + 1,
                kind: FileType::File,
            })
            .collect())
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (_, dev) = self.part(ino)?;
        let n = (dev.size().saturating_sub(offset)).min(buf.len() as u64) as usize;
        dev.read_at(offset, &mut buf[..n])?;
        Ok(n)
    }
    fn read_link(&self, _ino: Ino) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn map(&self, _ino: Ino) -> Result<Vec<Mapping>> {
        Ok(Vec::new())
    }
}

/// A view whose GPT headers (primary and backup, 512-byte sectors) get their CRCs
/// recomputed over the bytes below, so mutations of headers and entries reach the parser
/// instead of only the fallback to the other header.
pub(super) struct Rechecksummed {
    inner: Arc<dyn BlockRead>,
    patch: std::collections::BTreeMap<u64, u8>,
}

impl Rechecksummed {
    pub(super) fn new(inner: Arc<dyn BlockRead>) -> Rechecksummed {
        let last = inner.size() / 512 - 1;
        let mut v = Rechecksummed {
            inner,
            patch: Default::default(),
        };
        v.fix(1);
        v.fix(last);
        v
    }

    fn set_u32(&mut self, at: u64, x: u32) {
        for (i, b) in x.to_le_bytes().into_iter().enumerate() {
            self.patch.insert(at + i as u64, b);
        }
    }

    fn fix(&mut self, lba: u64) {
        let at = lba * 512;
        let mut h = [0u8; 512];
        if self.read_at(at, &mut h).is_err() || &h[..8] != b"EFI PART" {
            return;
        }
        let u32_at = |h: &[u8], a: usize| u32::from_le_bytes(h[a..a + 4].try_into().unwrap());
        let elba = u64::from_le_bytes(h[72..80].try_into().unwrap());
        let bytes = u32_at(&h, 80) as u64 * u32_at(&h, 84) as u64;
        if let Some(eat) = elba.checked_mul(512).filter(|_| bytes <= 1 << 20) {
            let mut e = vec![0u8; bytes as usize];
            if self.read_at(eat, &mut e).is_ok() {
                self.set_u32(at + 88, gpt::crc32(&[&e]));
            }
        }
        self.read_at(at, &mut h).unwrap();
        let hsize = (u32_at(&h, 12) as usize).clamp(92, 512);
        h[16..20].fill(0);
        self.set_u32(at + 16, gpt::crc32(&[&h[..hsize]]));
    }
}

impl BlockRead for Rechecksummed {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)?;
        for (&at, &v) in self.patch.range(offset..offset + buf.len() as u64) {
            buf[(at - offset) as usize] = v;
        }
        Ok(())
    }
}

#[test]
fn fuzz_partition() {
    if !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = testutil::fuzz_cases(1500);
    let k64 = 64 << 10;
    let gpt = testutil::load(&sfdisk_image(dir.path(), "gpt.img", 16, GPT_SCRIPT));
    let len = gpt.len();
    let hot = [0..k64, len - k64..len];
    let s = testutil::mutate(gpt.clone(), &hot, cases, 0x9e3779b97f4a7c15, PartFs::open);
    eprintln!("fuzz_partition GPT: {s:?}");
    assert!(s.opened > 0);
    // The header, entry array and backup, with their CRCs made to match again.
    let hot = [
        512..1024,
        1024..1024 + 128 * 128,
        len - 512..len,
        len - 33 * 512..len - 512,
    ];
    let fixed = |dev: Arc<dyn BlockRead>| PartFs::open(Arc::new(Rechecksummed::new(dev)));
    let s = testutil::mutate(gpt, &hot, cases, 0x3c6ef372fe94f82b, fixed);
    eprintln!("fuzz_partition GPT, CRCs fixed: {s:?}");
    assert!(s.opened > 0);

    let mbr_path = sfdisk_image(dir.path(), "mbr.img", 16, MBR_SCRIPT);
    let t = read(&open(&mbr_path)).unwrap().unwrap();
    let mbr = testutil::load(&mbr_path);
    let len = mbr.len();
    // Sector 0, and the EBR in front of each logical partition (the kernel's layout:
    // each EBR lies in the sector range just before its logical partition).
    let mut hot = vec![0..k64, len - k64..len, 446..512];
    for p in t.partitions.iter().filter(|p| p.number >= 5) {
        let ebr = p.start as usize - 2048 * 512;
        assert_eq!(&mbr[ebr + 510..ebr + 512], &[0x55, 0xAA], "no EBR at {ebr}");
        hot.push(ebr + 446..ebr + 512);
    }
    let s = testutil::mutate(mbr, &hot, cases, 0x2545f4914f6cdd1d, PartFs::open);
    eprintln!("fuzz_partition MBR: {s:?}");
    assert!(s.opened > 0);
}
