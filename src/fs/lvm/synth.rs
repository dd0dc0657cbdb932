//! PVs built byte by byte in memory (label, PV header, mda headers, metadata text), for
//! what the tools rarely make: metadata wrapping around its circular buffer, several
//! copies with different seqnos, ignored copies, striping over areas of one PV,
//! unsupported segment types, damage.

use super::label::{crc, INITIAL_CRC};
use super::*;
use crate::blockdev::MemDisk;

const MIB: usize = 1 << 20;

pub(super) struct Mda<'a> {
    pub off: u64,
    pub size: u64,
    pub text: &'a str,
    /// Where the text begins, relative to the area.
    pub text_off: u64,
    pub flags: u32,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A PV of `disk` bytes with its label in sector 1, extents from 1 MiB, and `mdas`.
pub(super) fn pv_image(uuid: &str, disk: usize, mdas: &[Mda]) -> Vec<u8> {
    assert_eq!(uuid.len(), 32);
    let mut img = vec![0u8; disk];
    let s = 512;
    img[s..s + 8].copy_from_slice(b"LABELONE");
    put_u64(&mut img, s + 8, 1);
    put_u32(&mut img, s + 20, 32);
    img[s + 24..s + 32].copy_from_slice(b"LVM2 001");
    let ph = s + 32;
    img[ph..ph + 32].copy_from_slice(uuid.as_bytes());
    put_u64(&mut img, ph + 32, disk as u64);
    put_u64(&mut img, ph + 40, MIB as u64); // data area: from 1 MiB to the end
    let mut at = ph + 72;
    for m in mdas {
        put_u64(&mut img, at, m.off);
        put_u64(&mut img, at + 8, m.size);
        at += 16;
        write_mda(&mut img, m);
    }
    let c = crc(INITIAL_CRC, &img[s + 20..s + 512]);
    put_u32(&mut img, s + 16, c);
    img
}

fn write_mda(img: &mut [u8], m: &Mda) {
    let h = m.off as usize;
    img[h + 4..h + 20].copy_from_slice(b" LVM2 x[5A%r0N*>");
    put_u32(img, h + 20, 1);
    put_u64(img, h + 24, m.off);
    put_u64(img, h + 32, m.size);
    let mut text = m.text.as_bytes().to_vec();
    text.push(0);
    put_u64(img, h + 40, m.text_off);
    put_u64(img, h + 48, text.len() as u64);
    put_u32(img, h + 56, crc(INITIAL_CRC, &text));
    put_u32(img, h + 60, m.flags);
    let mut pos = m.text_off as usize;
    for b in text {
        img[h + pos] = b;
        pos += 1;
        if pos == m.size as usize {
            pos = 512;
        }
    }
    let c = crc(INITIAL_CRC, &img[h + 4..h + 512]);
    put_u32(img, h, c);
}

pub(super) const PV0: &str = "AAAAAAbbbbCCCCddddEEEEffffGGGGGG";
pub(super) const PV1: &str = "HHHHHHiiiiJJJJkkkkLLLLmmmmNNNNNN";

/// VG metadata text with extents of 4 KiB and PVs (uuid, pe_count) whose extents start
/// at 1 MiB.
pub(super) fn vg_text(seqno: u64, pvs: &[(&str, u64)], lvs: &str) -> String {
    let mut t = format!(
        "synth {{\nid = \"Vg0000-1111-2222-3333-4444-5555-666666\"\nseqno = {seqno}\n\
         format = \"lvm2\"\nstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\n\
         extent_size = 8\nphysical_volumes {{\n"
    );
    for (i, (uuid, count)) in pvs.iter().enumerate() {
        t += &format!(
            "pv{i} {{\nid = \"{}\"\ndevice = \"/dev/x\" # comment\nstatus = [\"ALLOCATABLE\"]\n\
             pe_start = 2048\npe_count = {count}\n}}\n",
            label::dashed(uuid)
        );
    }
    t += &format!(
        "}}\nlogical_volumes {{\n{lvs}}}\n}}\n\
         contents = \"Text Format Volume Group\"\nversion = 1\n"
    );
    t
}

fn lv(name: &str, visible: bool, segs: &[&str]) -> String {
    let status = if visible {
        "[\"READ\", \"WRITE\", \"VISIBLE\"]"
    } else {
        "[\"READ\", \"WRITE\"]"
    };
    let mut t = format!(
        "{name} {{\nid = \"x\"\nstatus = {status}\nsegment_count = {}\n",
        segs.len()
    );
    for (i, s) in segs.iter().enumerate() {
        t += &format!("segment{} {{\n{s}\n}}\n", i + 1);
    }
    t + "}\n"
}

fn linear(start: u64, count: u64, pv: &str, pe: u64) -> String {
    format!(
        "start_extent = {start}\nextent_count = {count}\ntype = \"striped\"\nstripe_count = 1\n\
         stripes = [\n\"{pv}\", {pe}\n]"
    )
}

/// Standard LVs: `lin` (two pieces), `st` (striped over two areas of pv0), `thin`
/// (refused), `hidden` (not listed), `far` (on pv1).
pub(super) fn standard_lvs() -> String {
    [
        lv(
            "lin",
            true,
            &[&linear(0, 3, "pv0", 0), &linear(3, 2, "pv0", 40)],
        ),
        lv(
            "st",
            true,
            &[
                "start_extent = 0\nextent_count = 8\ntype = \"striped\"\nstripe_count = 2\n\
               stripe_size = 2\nstripes = [\"pv0\", 10, \"pv0\", 20]",
            ],
        ),
        lv(
            "thin",
            true,
            &["start_extent = 0\nextent_count = 4\ntype = \"thin\"\n\
               thin_pool = \"p\"\ntransaction_id = 1"],
        ),
        lv("hidden", false, &[&linear(0, 1, "pv0", 50)]),
        lv("far", true, &[&linear(0, 2, "pv1", 0)]),
    ]
    .concat()
}

/// A byte pattern that differs at every offset of the data area.
pub(super) fn pattern(img: &mut [u8]) {
    for (i, b) in img.iter_mut().enumerate().skip(MIB) {
        *b = ((i / 512) as u8) ^ ((i % 509) as u8);
    }
}

fn lvs_of(img: Vec<u8>) -> Vec<LogicalVolume> {
    let dev: Dev = Arc::new(MemDisk(img));
    let pv = probe(dev.as_ref()).unwrap().unwrap();
    assemble(vec![(pv, dev)]).unwrap()
}

#[test]
fn hand_built_pv() {
    let text = vg_text(3, &[(PV0, 256), (PV1, 256)], &standard_lvs());
    let mda = Mda {
        off: 4096,
        size: 64 << 10,
        text: &text,
        text_off: 512,
        flags: 0,
    };
    let mut img = pv_image(PV0, 2 * MIB, &[mda]);
    pattern(&mut img);
    let base = img.clone();
    let dev = MemDisk(img.clone());
    let pv = probe(&dev).unwrap().unwrap();
    assert_eq!(pv.vg_name, "synth");
    assert_eq!(pv.seqno, 3);
    assert_eq!(pv.pe_start, MIB as u64);
    assert_eq!(pv.pv_uuid, "AAAAAA-bbbb-CCCC-dddd-EEEE-ffff-GGGGGG");
    assert_eq!(pv.metadata, text);

    let lvs = lvs_of(img);
    let names: Vec<&str> = lvs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lin", "st", "thin", "far"]);
    let ext = 4096usize;
    let at = |pe: usize| MIB + pe * ext;
    let lin = lvs[0].dev.as_ref().unwrap();
    assert_eq!(lin.size(), 5 * ext as u64);
    let mut buf = vec![0u8; 5 * ext];
    lin.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..3 * ext], &base[at(0)..at(3)]);
    assert_eq!(&buf[3 * ext..], &base[at(40)..at(42)]);

    // Striped: chunks of 1 KiB alternate between the areas at extents 10 and 20.
    let st = lvs[1].dev.as_ref().unwrap();
    assert_eq!(st.size(), 8 * ext as u64);
    let mut got = vec![0u8; 8 * ext];
    st.read_at(0, &mut got).unwrap();
    for c in 0..got.len() / 1024 {
        let area = if c % 2 == 0 { at(10) } else { at(20) };
        let src = area + (c / 2) * 1024;
        assert_eq!(
            &got[c * 1024..(c + 1) * 1024],
            &base[src..src + 1024],
            "chunk {c}"
        );
    }
    let mut odd = vec![0u8; 3000];
    st.read_at(1500, &mut odd).unwrap();
    assert_eq!(odd, got[1500..4500]);
    assert!(st.read_at(8 * ext as u64 - 10, &mut odd).is_err());

    let e = lvs[2].dev.as_ref().err().unwrap();
    assert!(
        e.contains("\"thin\" (thin provisioning) is not supported"),
        "{e}"
    );
    assert_eq!(lvs[2].size, 4 * ext as u64);
    let e = lvs[3].dev.as_ref().err().unwrap();
    assert!(
        e.contains("HHHHHH-iiii-JJJJ-kkkk-LLLL-mmmm-NNNNNN (pv1) is missing"),
        "{e}"
    );
}

#[test]
fn metadata_wraps_around_its_ring() {
    let text = vg_text(9, &[(PV0, 256)], &lv("a", true, &[&linear(0, 1, "pv0", 0)]));
    let size = 8192u64;
    let mda = Mda {
        off: 4096,
        size,
        text: &text,
        text_off: size - 300,
        flags: 0,
    };
    assert!(text.len() > 300);
    let img = pv_image(PV0, 2 * MIB, &[mda]);
    // The text's start lies at the end of the area, its rest right after the header.
    assert_eq!(img[4096 + size as usize - 300], b's');
    let pv = probe(&MemDisk(img.clone())).unwrap().unwrap();
    assert_eq!(pv.seqno, 9);
    assert_eq!(pv.metadata, text);
    assert_eq!(lvs_of(img).len(), 1);
}

#[test]
fn newest_copy_wins_and_damage_is_reported() {
    let lvs5 = lv("old", true, &[&linear(0, 1, "pv0", 0)]);
    let lvs6 = lv("new", true, &[&linear(0, 1, "pv0", 0)]);
    let (t5, t6) = (
        vg_text(5, &[(PV0, 200)], &lvs5),
        vg_text(6, &[(PV0, 200)], &lvs6),
    );
    let end = (2 * MIB - 64 * 1024) as u64;
    let make = |flags6: u32| {
        pv_image(
            PV0,
            2 * MIB,
            &[
                Mda {
                    off: 4096,
                    size: 60 << 10,
                    text: &t5,
                    text_off: 4096,
                    flags: 0,
                },
                Mda {
                    off: end,
                    size: 64 << 10,
                    text: &t6,
                    text_off: 512,
                    flags: flags6,
                },
            ],
        )
    };
    let img = make(0);
    assert_eq!(probe(&MemDisk(img.clone())).unwrap().unwrap().seqno, 6);
    // The newer copy ignored, then damaged: the older one is used.
    assert_eq!(probe(&MemDisk(make(1))).unwrap().unwrap().seqno, 5);
    let mut bad = img.clone();
    bad[end as usize + 600] ^= 1;
    assert_eq!(probe(&MemDisk(bad.clone())).unwrap().unwrap().seqno, 5);
    // Both damaged: an error naming the metadata area.
    bad[4096 + 4096 + 10] ^= 1;
    let e = probe(&MemDisk(bad)).unwrap_err().to_string();
    assert!(e.contains("metadata area") && e.contains("checksum"), "{e}");

    // Across PVs of one VG, the newest metadata describes the VG.
    let img_a = pv_image(
        PV0,
        2 * MIB,
        &[Mda {
            off: 4096,
            size: 60 << 10,
            text: &t5,
            text_off: 512,
            flags: 0,
        }],
    );
    let mut pvs = Vec::new();
    for img in [img_a, make(0)] {
        let dev: Dev = Arc::new(MemDisk(img));
        pvs.push((probe(dev.as_ref()).unwrap().unwrap(), dev));
    }
    let lvs = assemble(pvs).unwrap();
    assert_eq!(lvs.len(), 1);
    assert_eq!(lvs[0].name, "new");

    // A damaged label is an error; no label, nothing.
    let mut bad = img.clone();
    bad[512 + 40] ^= 1;
    assert!(probe(&MemDisk(bad))
        .unwrap_err()
        .to_string()
        .contains("label"));
    assert!(probe(&MemDisk(vec![0; MIB])).unwrap().is_none());
    assert!(probe(&MemDisk(vec![0; 100])).unwrap().is_none());
}

#[test]
fn bad_segments_refuse_their_lv_only() {
    let lvs = [
        lv(
            "gap",
            true,
            &[&linear(0, 1, "pv0", 0), &linear(2, 1, "pv0", 5)],
        ),
        lv("past", true, &[&linear(0, 10, "pv0", 250)]),
        lv("nokey", true, &[&linear(0, 1, "pv7", 0)]),
        lv(
            "oddstripes",
            true,
            &[
                "start_extent = 0\nextent_count = 3\nstripe_count = 2\nstripe_size = 2\n\
               stripes = [\"pv0\", 1, \"pv0\", 9]",
            ],
        ),
        lv(
            "nosize",
            true,
            &["start_extent = 0\nextent_count = 2\nstripes = [\"pv0\", 1, \"pv0\", 9]"],
        ),
        lv(
            "raid",
            true,
            &["start_extent = 0\nextent_count = 2\ntype = \"raid1\""],
        ),
        lv("huge", true, &[&linear(0, u32::MAX as u64, "pv0", 0)]),
        lv("ok", true, &[&linear(0, 1, "pv0", 0)]),
    ]
    .concat();
    let text = vg_text(1, &[(PV0, 256)], &lvs);
    let img = pv_image(
        PV0,
        2 * MIB,
        &[Mda {
            off: 4096,
            size: 60 << 10,
            text: &text,
            text_off: 512,
            flags: 0,
        }],
    );
    let lvs = lvs_of(img);
    let why: Vec<(&str, String)> = lvs
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.dev.as_ref().err().cloned().unwrap_or_default(),
            )
        })
        .collect();
    let expect = [
        ("gap", "gap or overlap"),
        ("past", "past the end of PV"),
        ("nokey", "does not list"),
        ("oddstripes", "cannot be split"),
        ("nosize", "stripe size"),
        ("raid", "(RAID) is not supported"),
        ("huge", "past the end"),
    ];
    for ((name, e), (wname, wmsg)) in why.iter().zip(expect) {
        assert_eq!(*name, wname);
        assert!(e.contains(wmsg), "{name}: {e}");
        assert!(e.starts_with(&format!("LVM2 LV synth/{name}: ")), "{e}");
    }
    assert!(lvs[7].dev.is_ok());
}

/// Recomputes the label and mda header checksums of a hand-edited image.
fn rechecksum(img: &mut [u8], mda: usize) {
    let c = crc(INITIAL_CRC, &img[mda + 4..mda + 512]);
    put_u32(img, mda, c);
    let c = crc(INITIAL_CRC, &img[512 + 20..1024]);
    put_u32(img, 512 + 16, c);
}

#[test]
fn hostile_sizes_and_offsets() {
    let text = vg_text(1, &[(PV0, 256)], &lv("a", true, &[&linear(0, 1, "pv0", 0)]));
    let mda = Mda {
        off: 4096,
        size: 60 << 10,
        text: &text,
        text_off: 512,
        flags: 0,
    };
    let good = pv_image(PV0, 2 * MIB, &[mda]);
    // (byte to patch, value): the mda's size in the PV header and in its own header, the
    // text's offset and size, the PV header's offset, the mda's offset.
    let edits: &[&[(usize, u64)]] = &[
        &[
            (512 + 32 + 80, u64::MAX),
            (4096 + 32, u64::MAX),
            (4096 + 40, u64::MAX - 10),
        ],
        &[
            (4096 + 32, u64::MAX),
            (4096 + 40, 1 << 40),
            (4096 + 48, 1 << 40),
        ],
        &[(4096 + 48, (16 << 20) + 1)],
        &[(4096 + 40, 100)],
        &[(512 + 32 + 72, u64::MAX - 100), (512 + 32 + 80, 1000)],
    ];
    for e in edits {
        let mut img = good.clone();
        for &(at, v) in *e {
            put_u64(&mut img, at, v);
        }
        rechecksum(&mut img, 4096);
        let r = probe(&MemDisk(img));
        assert!(r.is_err(), "{e:?}: {r:?}");
    }
    let mut img = good.clone();
    put_u32(&mut img, 512 + 20, 500); // the PV header would run off the sector
    rechecksum(&mut img, 4096);
    assert!(probe(&MemDisk(img)).is_err());
}
