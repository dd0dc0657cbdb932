//! Tables made by `sfdisk` on sparse image files, compared with what `sfdisk --json` says
//! of the same image; damaged and hostile tables built by hand. The mutation run is in
//! `fuzz.rs`.

use super::fuzz::Rechecksummed;
use super::*;
use crate::blockdev::{FileDisk, MemDisk};
use crate::fs::testutil::{self, have, sh};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// A sparse image of `mib` MiB partitioned by `sfdisk` with `script`.
pub(super) fn sfdisk_image(dir: &Path, name: &str, mib: u64, script: &str) -> std::path::PathBuf {
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

pub(super) const GPT_SCRIPT: &str = "label: gpt\n\
    size=1M, type=uefi, name=\"EFI system\"\n\
    size=2M, type=linux, name=\"root fs\"\n\
    size=1M, type=lvm\n\
    size=1M, type=swap, name=\"swäp ✓\"\n\
    size=1M, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"data\"\n\
    type=21686148-6449-6E6F-744E-656564454649\n";

pub(super) const MBR_SCRIPT: &str = "label: dos\n\
    size=1M, type=83, bootable\n\
    size=1M, type=82\n\
    size=1M, type=8e\n\
    type=5\n\
    size=1M, type=83\n\
    size=2M, type=7\n\
    type=b\n";

pub(super) fn open(path: &Path) -> FileDisk {
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

#[test]
fn gpt_entries_outside_the_disk_or_overlapping_are_dropped() {
    if !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut img = testutil::load(&sfdisk_image(dir.path(), "gpt.img", 16, GPT_SCRIPT));
    let entry = |n: usize| 1024 + 128 * (n - 1);
    // Partition 2 ends past the disk; partition 4 starts inside partition 3; partition 5
    // ends before it starts.
    let e2 = entry(2) + 40;
    img[e2..e2 + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p3_start = u64::from_le_bytes(img[entry(3) + 32..entry(3) + 40].try_into().unwrap());
    let e4 = entry(4) + 32;
    img[e4..e4 + 8].copy_from_slice(&(p3_start + 1).to_le_bytes());
    let e5 = entry(5) + 40;
    img[e5..e5 + 8].copy_from_slice(&5u64.to_le_bytes());
    let dev = Rechecksummed::new(Arc::new(MemDisk(img)));
    let t = read(&dev).unwrap().unwrap();
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 3, 6], "{:?}", t.warnings);
    let w = t.warnings.join("\n");
    assert!(
        w.contains("partition 2 (LBA 4096..=1099511627776) lies outside the disk"),
        "{w}"
    );
    assert!(
        w.contains("partition 4") && w.contains("overlaps partition 3"),
        "{w}"
    );
    assert!(
        w.contains("partition 5 ends (LBA 5) before it starts"),
        "{w}"
    );
}

/// A FAT boot sector (jump, BPB) covering `total` sectors, over `s`.
fn with_fat_bpb(mut s: [u8; 512], total: u16) -> [u8; 512] {
    s[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    s[3..11].copy_from_slice(b"MSDOS5.0");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[13] = 4; // sectors per cluster
    s[14..16].copy_from_slice(&1u16.to_le_bytes());
    s[16] = 2; // FATs
    s[19..21].copy_from_slice(&total.to_le_bytes());
    s[21] = 0xF8;
    s[54..62].copy_from_slice(b"FAT16   ");
    s
}

#[test]
fn boot_sectors_with_sane_looking_entries() {
    let mut disk = vec![0u8; 8 << 20];
    // A FAT volume over the whole disk whose boot code happens to look like one entry:
    // the filesystem covers the "partition", so this is no table.
    let entries = mbr_sector(&[(0, 0x83, 2048, 4096)]);
    put(&mut disk, 0, &with_fat_bpb(entries, 16384));
    assert!(read(&MemDisk(disk.clone())).unwrap().is_none());
    // A boot loader that kept a stale BPB of a small volume ending before the partition:
    // a table.
    put(&mut disk, 0, &with_fat_bpb(entries, 1000));
    let t = read(&MemDisk(disk.clone())).unwrap().unwrap();
    assert_eq!(t.partitions.len(), 1);
    // NTFS over the whole disk.
    let mut s = entries;
    s[3..11].copy_from_slice(b"NTFS    ");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[40..48].copy_from_slice(&16383u64.to_le_bytes());
    put(&mut disk, 0, &s);
    assert!(read(&MemDisk(disk)).unwrap().is_none());
}
