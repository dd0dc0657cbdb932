//! Hand-made bytes: long-name sequences, dates, boot sectors, short names.

use super::super::*;
use crate::blockdev::MemDisk;

/// One 32-byte long-name entry: part `seq` (with 0x40 on the last part) of `text`.
fn lfn(ord: u8, sum: u8, units: &[u16]) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = ord;
    e[11] = 0x0F;
    e[13] = sum;
    let mut u = units.to_vec();
    if u.len() < 13 {
        u.push(0);
    }
    u.resize(13, 0xFFFF);
    for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
        .iter()
        .enumerate()
    {
        e[*at..at + 2].copy_from_slice(&u[i].to_le_bytes());
    }
    e
}

fn short(name: &[u8; 11], attr: u8) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e
}

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

#[test]
fn long_name_rules() {
    let a = *b"ABCDEF~1TXT";
    let sum = names::checksum(&a);
    let text = utf16("A long file name.txt");
    let mut dir: Vec<u8> = Vec::new();
    // Good: parts 2 (last, 0x40) then 1.
    dir.extend(lfn(0x42, sum, &text[13..]));
    dir.extend(lfn(0x01, sum, &text[..13]));
    dir.extend(short(&a, 0x20));
    // Wrong checksum: the short name is used.
    dir.extend(lfn(0x41, sum ^ 1, &utf16("wrong sum")));
    dir.extend(short(b"WRONG   TXT", 0x20));
    // Out of order (part 1 without a last part first), then a deleted entry in between.
    dir.extend(lfn(0x01, names::checksum(b"ORPHAN  TXT"), &utf16("orphan")));
    dir.extend(short(b"ORPHAN  TXT", 0x20));
    dir.extend(lfn(0x41, names::checksum(b"GONE    TXT"), &utf16("gone")));
    let mut del = short(b"GONE    TXT", 0x20);
    del[0] = 0xE5;
    dir.extend(del);
    // A complete sequence whose short entry is not the next one.
    dir.extend(lfn(0x41, names::checksum(b"LATE    TXT"), &utf16("late")));
    dir.extend(short(b"OTHER   TXT", 0x20));
    // Long names that must not be used: "..", a slash.
    dir.extend(lfn(0x41, names::checksum(b"DOTS    TXT"), &utf16("..")));
    dir.extend(short(b"DOTS    TXT", 0x20));
    dir.extend(lfn(0x41, names::checksum(b"SLASH   TXT"), &utf16("a/b")));
    dir.extend(short(b"SLASH   TXT", 0x20));
    // Unicode beyond the BMP (a surrogate pair), the dot entries, a label, 0x05 → 0xE5.
    dir.extend(lfn(0x41, names::checksum(b"EMOJI   TXT"), &utf16("🙂 é")));
    dir.extend(short(b"EMOJI   TXT", 0x20));
    dir.extend(short(b".          ", 0x10));
    dir.extend(short(b"..         ", 0x10));
    dir.extend(short(b"MY LABEL   ", 0x08));
    dir.extend(short(b"\x05KANJI  TXT", 0x20));
    let mut lower = short(b"CASE    TXT", 0x20);
    lower[12] = 0x10;
    dir.extend(lower);
    // The end marker: nothing after it counts.
    dir.extend([0u8; 32]);
    dir.extend(short(b"AFTER   TXT", 0x20));
    let l = dir::parse(&dir, |p| 1000 + p as u64, false, true);
    let got: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        got,
        [
            "A long file name.txt",
            "WRONG.TXT",
            "ORPHAN.TXT",
            "OTHER.TXT",
            "DOTS.TXT",
            "SLASH.TXT",
            "🙂 é",
            "\u{3c3}KANJI.TXT",
            "CASE.txt"
        ]
    );
    assert_eq!(l.entries[0].short, "ABCDEF~1.TXT");
    assert_eq!(l.entries[0].offset, 1000 + 64);
    assert_eq!(l.label.as_deref(), Some("MY LABEL"));
    assert_eq!(dir::parse(&dir, |p| p as u64, false, false).label, None);
}

#[test]
fn dates_and_times() {
    // 2001-02-03 04:05:06: year 21, month 2, day 3; 4 h 5 min 3×2 s.
    let d = (21 << 9) | (2 << 5) | 3;
    let t = (4 << 11) | (5 << 5) | 3;
    assert_eq!(dir::time(d, t, 0).sec, 981_173_106);
    assert_eq!(
        dir::time(d, t, 155),
        Time {
            sec: 981_173_107,
            nsec: 550_000_000
        }
    );
    // 1980-01-01 (date 0 reads as it), and the last day FAT can hold.
    assert_eq!(dir::time(0, 0, 0).sec, 315_532_800);
    assert_eq!(
        dir::time((127 << 9) | (12 << 5) | 31, 0, 0).sec,
        4_354_732_800
    );
    // Out-of-range fields never panic.
    let _ = dir::time(u16::MAX, u16::MAX, u8::MAX);
}

/// A minimal FAT16 boot sector to tweak.
fn boot16() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 0xEB;
    b[1] = 0x3C;
    b[2] = 0x90;
    b[3..11].copy_from_slice(b"MSDOS5.0");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = 4;
    b[14..16].copy_from_slice(&1u16.to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&512u16.to_le_bytes());
    b[19..21].copy_from_slice(&40960u16.to_le_bytes());
    b[21] = 0xF8;
    b[22..24].copy_from_slice(&40u16.to_le_bytes());
    b[38] = 0x29;
    b[43..54].copy_from_slice(b"NO NAME    ");
    b[54..62].copy_from_slice(b"FAT16   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

#[test]
fn probe_rules() {
    let ok = |b: &[u8]| {
        let mut img = b.to_vec();
        img.resize(40960 * 512, 0);
        probe(&MemDisk(img))
    };
    let b = boot16();
    assert!(ok(&b));
    let g = bpb::parse(&b, 40960 * 512).unwrap();
    assert_eq!(
        (g.fat_type, g.clusters),
        (FatType::Fat16, (40960 - 1 - 80 - 32) / 4)
    );
    let tweak = |at: usize, v: &[u8]| {
        let mut c = b.clone();
        c[at..at + v.len()].copy_from_slice(v);
        c
    };
    assert!(!ok(&tweak(3, b"NTFS    ")));
    assert!(!ok(&tweak(3, b"EXFAT   ")));
    assert!(matches!(
        bpb::parse(&tweak(3, b"EXFAT   "), 1 << 30),
        Err(Error::Unsupported(_))
    ));
    assert!(!ok(&tweak(0, &[0])), "no jump");
    assert!(!ok(&tweak(510, &[0, 0])), "no signature");
    assert!(!ok(&tweak(11, &768u16.to_le_bytes())), "sector size");
    assert!(!ok(&tweak(11, &8192u16.to_le_bytes())), "sector size");
    assert!(!ok(&tweak(13, &[3])), "cluster size");
    assert!(!ok(&tweak(14, &[0, 0])), "reserved");
    assert!(!ok(&tweak(16, &[3])), "FAT count");
    // No type string, but a geometry that adds up; then one that does not.
    let untyped = tweak(54, b"        ");
    assert!(ok(&untyped));
    let mut broken = untyped.clone();
    broken[22..24].copy_from_slice(&0u16.to_le_bytes());
    assert!(!ok(&broken));
    // A FAT too small for its clusters is refused.
    assert!(bpb::parse(&tweak(22, &8u16.to_le_bytes()), 1 << 30).is_err());
    assert!(!probe(&MemDisk(vec![0; 100])));
}

#[test]
fn short_names() {
    assert_eq!(names::short_name(b"README  TXT", 0).unwrap(), "README.TXT");
    assert_eq!(
        names::short_name(b"README  TXT", 0x18).unwrap(),
        "readme.txt"
    );
    assert_eq!(names::short_name(b"MAKEFILE   ", 0x08).unwrap(), "makefile");
    assert_eq!(names::short_name(b"CAF\x82    TXT", 0).unwrap(), "CAFé.TXT");
    assert_eq!(names::short_name(b"A/B\0    TXT", 0).unwrap(), "A_B_.TXT");
    assert!(names::short_name(b"        TXT", 0).is_none());
    assert_eq!(names::fold("Straße é".as_bytes()).unwrap(), "STRAßE É");
}
