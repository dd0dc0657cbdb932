//! Tables made by `sfdisk` on sparse image files, compared with what `sfdisk --json` says
//! of the same image; damaged and hostile tables built by hand; a mutation run.

use super::*;
use crate::blockdev::{FileDisk, MemDisk, Slice};
use crate::fs::testutil::{self, have, sh};
use crate::fs::{DirEntry, FileType, Filesystem, Ino, Mapping, Meta, Time};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// A sparse image of `mib` MiB partitioned by `sfdisk` with `script`.
fn sfdisk_image(dir: &Path, name: &str, mib: u64, script: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut child = std::process::Command::new("sfdisk")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
    path
}

/// `sfdisk --json` of an image: its partitions.
fn sfdisk_json(path: &Path) -> Vec<serde_json::Value> {
    let o = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// The number at the end of a node name ("disk.img12" → 12).
fn node_number(node: &str) -> u32 {
    let digits: String = node
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

/// Asserts that `t` lists what sfdisk lists: numbers, starts, sizes, types and names.
fn assert_like_sfdisk(t: &PartitionTable, path: &Path, ss: u64) {
    let want = sfdisk_json(path);
    assert_eq!(t.partitions.len(), want.len(), "{:#?}", t.partitions);
    for (p, w) in t.partitions.iter().zip(&want) {
        assert_eq!(p.number, node_number(w["node"].as_str().unwrap()));
        assert_eq!(
            p.start,
            w["start"].as_u64().unwrap() * ss,
            "start of {}",
            p.number
        );
        assert_eq!(
            p.len,
            w["size"].as_u64().unwrap() * ss,
            "size of {}",
            p.number
        );
        let ty = w["type"].as_str().unwrap().to_lowercase();
        match t.kind {
            TableKind::Gpt => assert_eq!(p.type_id, ty),
            TableKind::Mbr => assert_eq!(p.type_id, format!("0x{ty:0>2}")),
        }
        assert_eq!(
            p.name.as_deref(),
            w["name"].as_str(),
            "name of {}",
            p.number
        );
        if let Some(u) = w["uuid"].as_str() {
            assert_eq!(p.guid.as_deref(), Some(u.to_lowercase().as_str()));
        }
    }
}

const GPT_SCRIPT: &str = "label: gpt\n\
    size=1M, type=uefi, name=\"EFI system\"\n\
    size=2M, type=linux, name=\"root fs\"\n\
    size=1M, type=lvm\n\
    size=1M, type=swap, name=\"swäp ✓\"\n\
    size=1M, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"data\"\n\
    type=21686148-6449-6E6F-744E-656564454649\n";

const MBR_SCRIPT: &str = "label: dos\n\
    size=1M, type=83, bootable\n\
    size=1M, type=82\n\
    size=1M, type=8e\n\
    type=5\n\
    size=1M, type=83\n\
    size=2M, type=7\n\
    type=b\n";

fn open(path: &Path) -> FileDisk {
    FileDisk::open(path).unwrap()
}

#[test]
fn gpt_matches_sfdisk() {
    if !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), "gpt.img", 16, GPT_SCRIPT);
    let t = read(&open(&img)).unwrap().expect("a GPT");
    assert_eq!(t.kind, TableKind::Gpt);
    assert_eq!(t.sector_size, 512);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_like_sfdisk(&t, &img, 512);
    let names: Vec<&str> = t.partitions.iter().map(|p| p.type_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "EFI System",
            "Linux filesystem",
            "Linux LVM",
            "Linux swap",
            "Microsoft basic data",
            "BIOS boot"
        ]
    );
    assert_eq!(t.partitions[3].name.as_deref(), Some("swäp ✓"));
}

#[test]
fn mbr_with_logical_partitions_matches_sfdisk() {
    if !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), "mbr.img", 16, MBR_SCRIPT);
    let t = read(&open(&img)).unwrap().expect("an MBR");
    assert_eq!(t.kind, TableKind::Mbr);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_like_sfdisk(&t, &img, 512);
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7]);
    let p = &t.partitions;
    assert!(p[0].bootable && !p[1].bootable);
    assert!(p[3].extended && p.iter().filter(|p| p.extended).count() == 1);
    assert_eq!(p[0].type_name, "Linux filesystem");
    assert_eq!(p[2].type_name, "Linux LVM");
    assert_eq!(p[3].type_name, "extended");
    assert_eq!(p[6].type_id, "0x0b");
}

#[test]
fn gpt_damaged_primary_falls_back_to_backup() {
    if !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sfdisk_image(dir.path(), "gpt.img", 16, GPT_SCRIPT);
    let good = testutil::load(&img);
    let want = read(&MemDisk(good.clone())).unwrap().unwrap().partitions;

    // A byte of the primary header (the disk GUID), then of its entry array.
    for at in [512 + 60, 1024 + 130] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        let t = read(&MemDisk(bad)).unwrap().expect("the backup GPT");
        assert_eq!(t.partitions, want);
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("backup header at LBA 32767 is used")),
            "{:?}",
            t.warnings
        );
    }

    // The backup alone damaged: the primary is used, with a warning.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 512 + 70] ^= 1;
    let t = read(&MemDisk(bad.clone())).unwrap().unwrap();
    assert_eq!(t.partitions, want);
    assert!(t.warnings[0].contains("backup header at LBA 32767 is damaged"));

    // Both damaged: an error naming the GPT.
    bad[512 + 60] ^= 0x40;
    let e = read(&MemDisk(bad)).unwrap_err().to_string();
    assert!(e.contains("neither GPT header"), "{e}");

    // The protective MBR wiped: the primary GPT is still found.
    let mut bad = good.clone();
    bad[..512].fill(0);
    let t = read(&MemDisk(bad)).unwrap().unwrap();
    assert_eq!(t.partitions, want);
    assert!(t.warnings[0].contains("no protective MBR"));
}

#[test]
fn whole_disk_filesystems_have_no_table() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert!(read(&open(&blank)).unwrap().is_none());
    assert!(read(&MemDisk(vec![0; 100])).unwrap().is_none());

    if have("mkfs.ext4") {
        let img = dir.path().join("ext4.img");
        std::fs::copy(&blank, &img).unwrap();
        sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
        assert!(read(&open(&img)).unwrap().is_none());
    }
    if have("mkfs.vfat") {
        for fat in ["12", "16", "32"] {
            let img = dir.path().join(format!("fat{fat}.img"));
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(if fat == "12" { 4 << 20 } else { 40 << 20 })
                .unwrap();
            sh("mkfs.vfat", &["-F", fat, img.to_str().unwrap()]);
            let t = read(&open(&img)).unwrap();
            assert!(t.is_none(), "FAT{fat} read as a table: {t:?}");
        }
    }
}

#[test]
fn gpt_with_4096_byte_sectors() {
    if !have("sfdisk") || !have("losetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("4k.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let lo = crate::fs::lvm::tests::Loop::attach(&img, &["-b", "4096"]);
    let mut child = std::process::Command::new("sfdisk")
        .arg(&lo.dev)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        // "Re-reading the partition table failed": a loop device without partition scan.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nsize=2M, type=uefi, name=\"EFI\"\ntype=linux, name=\"root\"\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let t = read(&open(&img)).unwrap().expect("a 4K GPT");
    assert_eq!(t.sector_size, 4096);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    // sfdisk on the loop device sees 4096-byte sectors, and counts in them.
    assert_like_sfdisk(&t, Path::new(&lo.dev), 4096);
    let p = &t.partitions;
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].start, p[0].len), (1 << 20, 2 << 20));
    assert_eq!(p[1].name.as_deref(), Some("root"));
    // The GPT's own sectors at 4096 bytes each: LBA 1 is byte 4096.
    assert_eq!(&testutil::load(&img)[4096..4104], b"EFI PART");
}

/// An MBR sector with the given (boot, type, start, len) entries.
fn mbr_sector(entries: &[(u8, u8, u32, u32)]) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, &(boot, kind, start, len)) in entries.iter().enumerate() {
        let o = 446 + 16 * i;
        s[o] = boot;
        s[o + 4] = kind;
        s[o + 8..o + 12].copy_from_slice(&start.to_le_bytes());
        s[o + 12..o + 16].copy_from_slice(&len.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn put(disk: &mut [u8], lba: u64, s: &[u8; 512]) {
    let at = lba as usize * 512;
    disk[at..at + 512].copy_from_slice(s);
}

#[test]
fn hostile_mbrs() {
    let mib = 1usize << 20;
    let mut disk = vec![0u8; 8 * mib];
    // Extended 2048..+8192 whose EBR links back to itself, holding one logical.
    put(
        &mut disk,
        0,
        &mbr_sector(&[(0, 0x83, 100, 100), (0, 0x05, 2048, 8192)]),
    );
    put(
        &mut disk,
        2048,
        &mbr_sector(&[(0, 0x83, 64, 64), (0, 0x05, 0, 100)]),
    );
    let t = read(&MemDisk(disk.clone())).unwrap().unwrap();
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 5]);
    assert!(
        t.warnings.iter().any(|w| w.contains("loops back")),
        "{:?}",
        t.warnings
    );

    // A chain of 300 EBRs, each link one sector on: cut at 256 logical partitions.
    let mut d = disk.clone();
    for i in 0..300u32 {
        let lba = 2048 + 2 * i;
        put(
            &mut d,
            lba as u64,
            &mbr_sector(&[(0, 0x83, 1, 1), (0, 0x05, 2 * i + 2, 2)]),
        );
    }
    let t = read(&MemDisk(d)).unwrap().unwrap();
    assert_eq!(t.partitions.len(), 2 + 256);
    assert!(t.warnings.iter().any(|w| w.contains("longer than")));

    // Overlapping primaries, an EBR without a signature.
    let mut d = disk.clone();
    put(
        &mut d,
        0,
        &mbr_sector(&[
            (0, 0x83, 100, 100),
            (0, 0x83, 150, 100),
            (0, 0x0f, 2048, 8192),
        ]),
    );
    let t = read(&MemDisk(d)).unwrap().unwrap();
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 3, 5]);
    assert!(
        t.warnings
            .iter()
            .any(|w| w.contains("partition 2 (bytes 76800..128000) overlaps")),
        "{:?}",
        t.warnings
    );

    // Not tables: a bad boot flag, a range past the disk, a type-0 entry with a range.
    for e in [
        (1, 0x83, 100, 100),
        (0, 0x83, 100, 1 << 20),
        (0, 0, 100, 100),
    ] {
        let mut d = vec![0u8; 4 * mib];
        put(&mut d, 0, &mbr_sector(&[e]));
        assert!(read(&MemDisk(d)).unwrap().is_none(), "{e:?}");
    }
    // A GPT protective entry with no GPT behind it is an error, not "no table".
    let mut d = vec![0u8; 4 * mib];
    put(&mut d, 0, &mbr_sector(&[(0, 0xEE, 1, 8191)]));
    assert!(read(&MemDisk(d)).is_err());
}

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
struct Rechecksummed {
    inner: Arc<dyn BlockRead>,
    patch: std::collections::BTreeMap<u64, u8>,
}

impl Rechecksummed {
    fn new(inner: Arc<dyn BlockRead>) -> Rechecksummed {
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
