//! A hand-built volume for what ntfs-3g does not make in a small image: an `$MFT` whose
//! `$DATA` continues in an extension record named by the MFT's own `$ATTRIBUTE_LIST`.
//! Geometry: 512-byte sectors, 1 KiB clusters and records.

use super::inode::{bootstrap_mft, AT_ATTRIBUTE_LIST, AT_DATA};
use super::*;
use crate::blockdev::MemDisk;

const CS: usize = 1024;

/// An MFT record (base reference `base`) holding `attrs`, fixups applied.
fn record(attrs: &[Vec<u8>], base: u64) -> Vec<u8> {
    let mut r = vec![0u8; CS];
    r[0..4].copy_from_slice(b"FILE");
    r[4..6].copy_from_slice(&0x30u16.to_le_bytes());
    r[6..8].copy_from_slice(&3u16.to_le_bytes());
    r[0x10..0x12].copy_from_slice(&1u16.to_le_bytes());
    r[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
    r[0x16..0x18].copy_from_slice(&1u16.to_le_bytes());
    r[0x20..0x28].copy_from_slice(&base.to_le_bytes());
    let mut at = 0x38;
    for a in attrs {
        r[at..at + a.len()].copy_from_slice(a);
        at += a.len();
    }
    r[at..at + 4].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    r[0x18..0x1C].copy_from_slice(&((at + 8) as u32).to_le_bytes());
    r[0x1C..0x20].copy_from_slice(&(CS as u32).to_le_bytes());
    // Update sequence number 7; the real sector tails go to the array.
    r[0x30..0x32].copy_from_slice(&7u16.to_le_bytes());
    for i in 1..3 {
        let tail = i * 512 - 2;
        let (a, b) = (r[tail], r[tail + 1]);
        r[0x30 + 2 * i] = a;
        r[0x31 + 2 * i] = b;
        r[tail..tail + 2].copy_from_slice(&7u16.to_le_bytes());
    }
    r
}

fn pad8(mut v: Vec<u8>) -> Vec<u8> {
    while v.len() % 8 != 0 {
        v.push(0);
    }
    v
}

fn resident(ty: u32, value: &[u8]) -> Vec<u8> {
    let mut a = vec![0u8; 0x18];
    a[0..4].copy_from_slice(&ty.to_le_bytes());
    a[0x10..0x14].copy_from_slice(&(value.len() as u32).to_le_bytes());
    a[0x14..0x16].copy_from_slice(&0x18u16.to_le_bytes());
    a.extend_from_slice(value);
    let mut a = pad8(a);
    let len = a.len() as u32;
    a[4..8].copy_from_slice(&len.to_le_bytes());
    a
}

/// A non-resident unnamed `$DATA` extent for VCNs `lo..=hi` with mapping pairs `pairs`.
fn data_extent(lo: u64, hi: u64, pairs: &[u8], size: u64) -> Vec<u8> {
    let mut a = vec![0u8; 0x40];
    a[0..4].copy_from_slice(&AT_DATA.to_le_bytes());
    a[8] = 1;
    a[0x10..0x18].copy_from_slice(&lo.to_le_bytes());
    a[0x18..0x20].copy_from_slice(&hi.to_le_bytes());
    a[0x20..0x22].copy_from_slice(&0x40u16.to_le_bytes());
    for at in [0x28, 0x30, 0x38] {
        a[at..at + 8].copy_from_slice(&size.to_le_bytes());
    }
    a.extend_from_slice(pairs);
    a.push(0);
    let mut a = pad8(a);
    let len = a.len() as u32;
    a[4..8].copy_from_slice(&len.to_le_bytes());
    a
}

fn list_entry(ty: u32, lowest: u64, mref: u64) -> Vec<u8> {
    let mut e = vec![0u8; 0x20];
    e[0..4].copy_from_slice(&ty.to_le_bytes());
    e[4..6].copy_from_slice(&0x20u16.to_le_bytes());
    e[7] = 0x1A;
    e[8..16].copy_from_slice(&lowest.to_le_bytes());
    e[16..24].copy_from_slice(&mref.to_le_bytes());
    e
}

/// The volume: MFT records 0–1 in clusters 4–5, records 2–5 in clusters 10–13; record 1
/// is the extension of record 0 holding VCNs 2–5. Record 4 is a marked record to find.
fn volume(ext_base: u64) -> Vec<u8> {
    let mut disk = vec![0u8; 32 * CS];
    let b = &mut disk[..512];
    b[3..11].copy_from_slice(b"NTFS    ");
    b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
    b[0x0D] = 2;
    b[0x28..0x30].copy_from_slice(&64u64.to_le_bytes());
    b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
    b[0x40] = 0xF6;
    b[0x44] = 0xF4;
    b[510] = 0x55;
    b[511] = 0xAA;
    let size = 6 * CS as u64;
    let mut list = list_entry(AT_DATA, 0, 1 << 48);
    list.extend(list_entry(AT_DATA, 2, (1 << 48) | 1));
    let rec0 = record(
        &[
            resident(AT_ATTRIBUTE_LIST, &list),
            // 2 clusters at LCN 4.
            data_extent(0, 1, &[0x11, 2, 4], size),
        ],
        0,
    );
    // 4 clusters at LCN 10 (the runlist restarts from LCN 0 in each extent).
    let rec1 = record(&[data_extent(2, 5, &[0x11, 4, 10], 0)], ext_base);
    let rec4 = record(&[resident(0x10, &[0u8; 0x48])], 0);
    disk[4 * CS..5 * CS].copy_from_slice(&rec0);
    disk[5 * CS..6 * CS].copy_from_slice(&rec1);
    disk[12 * CS..13 * CS].copy_from_slice(&rec4);
    disk
}

#[test]
fn mft_attribute_list() {
    let disk = volume(1 << 48);
    let geo = boot::Geometry::parse(&disk[..512], disk.len() as u64).unwrap();
    let dev = MemDisk(disk);
    let mft = bootstrap_mft(&dev, &geo).unwrap();
    assert_eq!(mft.size, 6 * CS as u64);
    let lcns: Vec<(u64, u64, Option<u64>)> =
        mft.runs().iter().map(|r| (r.vcn, r.len, r.lcn)).collect();
    assert_eq!(lcns, vec![(0, 2, Some(4)), (2, 4, Some(10))]);
    let mut buf = vec![0u8; CS];
    mft.read(&dev, CS as u64, 4 * CS as u64, &mut buf, "t")
        .unwrap();
    let r = record::Record::parse(4, buf).unwrap();
    assert!(r.in_use() && r.attrs().unwrap()[0].ty == 0x10);

    // An extension record that does not point back at the MFT is refused.
    let disk = volume((1 << 48) | 9);
    let dev = MemDisk(disk);
    let e = bootstrap_mft(&dev, &geo).unwrap_err().to_string();
    assert!(e.contains("not an extension"), "{e}");
}
