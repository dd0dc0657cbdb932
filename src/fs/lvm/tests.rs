//! LVM made by the real lvm2 tools on loop devices over sparse image files.
//!
//! Device-mapper is absent on build machines, so the tools run with `--driverloaded n`
//! (LVM then writes metadata without activating anything: "Activation disabled" warnings)
//! and `lvcreate -an -Zn` (no activation, no zeroing). `--devices` limits each command to
//! this test's loop devices, so other loop devices on the machine are neither scanned nor
//! touched. Each LV's place is taken from `lvs -o seg_pe_ranges` and `pvs -o pe_start`,
//! bytes are written there in the backing image file (`mkfs.ext4 -E offset=N`, random
//! data), and the LV view must read exactly those bytes.

use super::*;
use crate::blockdev::FileDisk;
use crate::fs::testutil::have;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A loop device over an image file, detached when dropped (also when a test fails).
pub(crate) struct Loop {
    pub dev: String,
}

impl Loop {
    /// `losetup -f --show <extra> <img>`.
    pub(crate) fn attach(img: &Path, extra: &[&str]) -> Loop {
        let o = Command::new("losetup")
            .args(extra)
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .expect("losetup");
        assert!(
            o.status.success(),
            "losetup {extra:?} {}: {}",
            img.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// True if the lvm2 tools and loop devices can be used here.
pub(crate) fn have_lvm() -> bool {
    have("losetup") && have("pvcreate") && have("lvcreate") && have("mkfs.ext4")
}

/// Runs an lvm2 command limited to `loops`, without device-mapper; its stdout.
pub(super) fn lvm(cmd: &str, args: &[&str], loops: &[&Loop]) -> String {
    let devices: Vec<&str> = loops.iter().map(|l| l.dev.as_str()).collect();
    let o = Command::new(cmd)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .args(["--devices", &devices.join(","), "--driverloaded", "n"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A VG name no other test (or process) uses.
pub(super) fn vg_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cairn{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn sparse(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
}

/// Where a loop device's bytes lie: its image file and offset in it.
pub(super) struct Backing<'a> {
    pub lo: &'a Loop,
    pub img: PathBuf,
    pub base: u64,
}

/// One segment as the tools report it: stripe size in bytes, and per stripe the device
/// and inclusive PE range.
struct ToolSeg {
    start_pe: u64,
    stripe_size: u64,
    ranges: Vec<(String, u64, u64)>,
}

/// The segments of `vg/lv` per `lvs`, sorted.
fn tool_segments(vg: &str, lv: &str, loops: &[&Loop]) -> Vec<ToolSeg> {
    let out = lvm(
        "lvs",
        &[
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "--separator",
            "|",
            "-o",
            "seg_start_pe,stripe_size,seg_pe_ranges",
            &format!("{vg}/{lv}"),
        ],
        loops,
    );
    let mut segs: Vec<ToolSeg> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            let ranges = f[2]
                .split_whitespace()
                .map(|r| {
                    let (dev, pes) = r.rsplit_once(':').unwrap();
                    let (a, b) = pes.split_once('-').unwrap();
                    (dev.to_string(), a.parse().unwrap(), b.parse().unwrap())
                })
                .collect();
            ToolSeg {
                start_pe: f[0].trim().parse().unwrap(),
                stripe_size: f[1].trim().parse().unwrap(),
                ranges,
            }
        })
        .collect();
    segs.sort_by_key(|s| s.start_pe);
    segs
}

/// Where extents begin on a PV, per `pvs`.
fn pe_start_of(dev: &str, loops: &[&Loop]) -> u64 {
    num(&lvm(
        "pvs",
        &[
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "pe_start",
            dev,
        ],
        loops,
    ))
}

fn num(s: &str) -> u64 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The bytes `vg/lv` holds, gathered from the image files where the tools say its
/// extents lie (striped segments interleaved chunk by chunk).
fn tool_bytes(vg: &str, lv: &str, backing: &[Backing]) -> Vec<u8> {
    let loops: Vec<&Loop> = backing.iter().map(|b| b.lo).collect();
    let ext = num(&lvm(
        "vgs",
        &[
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "vg_extent_size",
            vg,
        ],
        &loops,
    ));
    let mut out = Vec::new();
    for seg in tool_segments(vg, lv, &loops) {
        let mut stripes = Vec::new();
        for (dev, a, b) in &seg.ranges {
            let bk = backing.iter().find(|b| &b.lo.dev == dev).unwrap();
            let pe_start = pe_start_of(dev, &loops);
            let mut buf = vec![0u8; ((b - a + 1) * ext) as usize];
            let f = std::fs::File::open(&bk.img).unwrap();
            f.read_exact_at(&mut buf, bk.base + pe_start + a * ext)
                .unwrap();
            stripes.push(buf);
        }
        if stripes.len() == 1 {
            out.extend_from_slice(&stripes[0]);
            continue;
        }
        let chunk = seg.stripe_size as usize;
        let rows = stripes[0].len() / chunk;
        for row in 0..rows {
            for s in &stripes {
                out.extend_from_slice(&s[row * chunk..(row + 1) * chunk]);
            }
        }
    }
    out
}

/// Writes an ext4 filesystem of `len` bytes at `offset` of `img`.
pub(super) fn mkfs_at(img: &Path, offset: u64, len: u64) {
    crate::fs::testutil::sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={offset},nodiscard"),
            img.to_str().unwrap(),
            &format!("{}k", len / 1024),
        ],
    );
}

/// Physical byte offset in its image of the first extent of `vg/lv`.
pub(super) fn first_extent_at(vg: &str, lv: &str, backing: &[Backing]) -> (PathBuf, u64, u64) {
    let loops: Vec<&Loop> = backing.iter().map(|b| b.lo).collect();
    let segs = tool_segments(vg, lv, &loops);
    let (dev, a, b) = &segs[0].ranges[0];
    let ext = num(&lvm(
        "vgs",
        &[
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "vg_extent_size",
            vg,
        ],
        &loops,
    ));
    let pe_start = pe_start_of(dev, &loops);
    let bk = backing.iter().find(|b| &b.lo.dev == dev).unwrap();
    (
        bk.img.clone(),
        bk.base + pe_start + a * ext,
        (b - a + 1) * ext,
    )
}

fn fill_random(img: &Path, offset: u64, len: u64, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&data, offset).unwrap();
}

fn read_all(dev: &dyn BlockRead) -> Vec<u8> {
    let mut buf = vec![0u8; dev.size() as usize];
    // Odd-sized pieces, so reads cross segment and stripe boundaries.
    let mut at = 0usize;
    while at < buf.len() {
        let n = 77_777.min(buf.len() - at);
        dev.read_at(at as u64, &mut buf[at..at + n]).unwrap();
        at += n;
    }
    buf
}

/// The LVs the reader finds on these (image, offset, length) PVs.
fn reader_lvs(pvs: &[(PathBuf, u64, u64)]) -> Vec<LogicalVolume> {
    let mut found = Vec::new();
    for (img, base, len) in pvs {
        let disk: Dev = Arc::new(FileDisk::open(img).unwrap());
        let dev: Dev = Arc::new(Slice::new(disk, *base, *len, "pv").unwrap());
        let pv = probe(dev.as_ref()).unwrap().expect("an LVM2 PV");
        found.push((pv, dev));
    }
    assemble(found).unwrap()
}

/// Asserts the reader's view of `vg/lv` equals the tools' placement, ext4 magic included.
fn check_lv(lvs: &[LogicalVolume], vg: &str, lv: &str, backing: &[Backing], ext4: bool) {
    let got = lvs
        .iter()
        .find(|l| l.vg == vg && l.name == lv)
        .unwrap_or_else(|| panic!("{vg}/{lv} not found"));
    let dev = got
        .dev
        .as_ref()
        .unwrap_or_else(|e| panic!("{vg}/{lv}: {e}"));
    let want = tool_bytes(vg, lv, backing);
    assert_eq!(got.size, want.len() as u64, "{vg}/{lv}: size");
    assert_eq!(dev.size(), got.size);
    let bytes = read_all(dev.as_ref());
    if ext4 {
        assert_eq!(&bytes[1080..1082], &[0x53, 0xEF], "{vg}/{lv}: ext4 magic");
    }
    assert!(
        blake3::hash(&bytes) == blake3::hash(&want),
        "{vg}/{lv}: the LV view differs from the extents the tools placed"
    );
}

#[test]
fn two_lvs_one_in_two_segments() {
    if !have_lvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pv.img");
    sparse(&img, 32);
    let lo = Loop::attach(&img, &[]);
    let vg = vg_name();
    let l = [&lo];
    lvm("pvcreate", &[&lo.dev], &l);
    lvm("vgcreate", &["-s", "1M", &vg, &lo.dev], &l);
    lvm(
        "lvcreate",
        &["-an", "-Zn", "-L", "4M", "-n", "lv1", &vg],
        &l,
    );
    lvm(
        "lvcreate",
        &["-an", "-Zn", "-L", "3M", "-n", "lv2", &vg],
        &l,
    );
    lvm("lvextend", &["-L", "+2M", &format!("{vg}/lv1")], &l);
    let backing = [Backing {
        lo: &lo,
        img: img.clone(),
        base: 0,
    }];
    assert_eq!(
        tool_segments(&vg, "lv1", &l).len(),
        2,
        "lv1 is not in two pieces"
    );
    // ext4 at the start of each LV; random bytes in lv1's second piece.
    for lv in ["lv1", "lv2"] {
        let (path, at, len) = first_extent_at(&vg, lv, &backing);
        mkfs_at(&path, at, len);
    }
    let segs = tool_segments(&vg, "lv1", &l);
    let pe_start = pe_start_of(&lo.dev, &l);
    let (_, a, b) = segs[1].ranges[0];
    fill_random(&img, pe_start + a * (1 << 20), (b - a + 1) << 20, 7);

    let lvs = reader_lvs(&[(img.clone(), 0, 32 << 20)]);
    let names: Vec<&str> = lvs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lv1", "lv2"]);
    check_lv(&lvs, &vg, "lv1", &backing, true);
    check_lv(&lvs, &vg, "lv2", &backing, true);
    assert_eq!(lvs[0].size, 6 << 20);

    let pv = probe(&FileDisk::open(&img).unwrap()).unwrap().unwrap();
    assert_eq!(pv.vg_name, vg);
    assert_eq!(pv.pe_start, pe_start);
    assert_eq!(pv.seqno, 4, "pvcreate+vgcreate+2 lvcreate+lvextend");
    let uuid = lvm("pvs", &["--noheadings", "-o", "pv_uuid", &lo.dev], &l);
    assert_eq!(pv.pv_uuid, uuid.trim());
}

#[test]
fn pv_inside_a_gpt_partition() {
    if !have_lvm() || !have("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sparse(&img, 48);
    let mut child = Command::new("sfdisk")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nsize=4M, type=uefi\nsize=36M, type=lvm, name=\"pv\"\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let table = crate::fs::partition::read(&FileDisk::open(&img).unwrap())
        .unwrap()
        .unwrap();
    let p = table.partitions[1].clone();
    assert_eq!(p.type_name, "Linux LVM");

    let lo = Loop::attach(
        &img,
        &[
            "-o",
            &p.start.to_string(),
            "--sizelimit",
            &p.len.to_string(),
        ],
    );
    let vg = vg_name();
    let l = [&lo];
    lvm("pvcreate", &[&lo.dev], &l);
    lvm("vgcreate", &["-s", "2M", &vg, &lo.dev], &l);
    lvm(
        "lvcreate",
        &["-an", "-Zn", "-L", "10M", "-n", "root", &vg],
        &l,
    );
    lvm(
        "lvcreate",
        &["-an", "-Zn", "-L", "6M", "-n", "home", &vg],
        &l,
    );
    let backing = [Backing {
        lo: &lo,
        img: img.clone(),
        base: p.start,
    }];
    for lv in ["root", "home"] {
        let (path, at, len) = first_extent_at(&vg, lv, &backing);
        mkfs_at(&path, at, len);
    }
    let lvs = reader_lvs(&[(img.clone(), p.start, p.len)]);
    assert_eq!(lvs.len(), 2);
    check_lv(&lvs, &vg, "root", &backing, true);
    check_lv(&lvs, &vg, "home", &backing, true);
    // The whole disk is no PV: the label is inside the partition.
    assert!(probe(&FileDisk::open(&img).unwrap()).unwrap().is_none());
}

#[test]
fn vg_across_two_disks_linear_and_striped() {
    if !have_lvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    sparse(&a, 16);
    sparse(&b, 16);
    let (la, lb) = (Loop::attach(&a, &[]), Loop::attach(&b, &[]));
    let vg = vg_name();
    let l = [&la, &lb];
    lvm("pvcreate", &[&la.dev, &lb.dev], &l);
    lvm("vgcreate", &["-s", "1M", &vg, &la.dev, &lb.dev], &l);
    let st = [
        "-an", "-Zn", "-i", "2", "-I", "64k", "-L", "6M", "-n", "st", &vg,
    ];
    lvm("lvcreate", &st, &l);
    lvm(
        "lvcreate",
        &["-an", "-Zn", "-L", "20M", "-n", "span", &vg],
        &l,
    );
    let backing = [
        Backing {
            lo: &la,
            img: a.clone(),
            base: 0,
        },
        Backing {
            lo: &lb,
            img: b.clone(),
            base: 0,
        },
    ];
    assert_eq!(
        tool_segments(&vg, "span", &l).len(),
        2,
        "span is not on both PVs"
    );
    assert_eq!(tool_segments(&vg, "st", &l)[0].ranges.len(), 2);
    // Random bytes over every extent both LVs use, so the interleaving shows.
    for lv in ["st", "span"] {
        for (i, seg) in tool_segments(&vg, lv, &l).iter().enumerate() {
            for (j, (dev, pa, pb)) in seg.ranges.iter().enumerate() {
                let bk = backing.iter().find(|b| &b.lo.dev == dev).unwrap();
                let at = pe_start_of(dev, &l) + pa * (1 << 20);
                let seed = 1 + i as u64 * 10 + j as u64;
                fill_random(&bk.img, at, (pb - pa + 1) << 20, seed);
            }
        }
    }
    let both = [(a.clone(), 0, 16 << 20), (b.clone(), 0, 16 << 20)];
    let lvs = reader_lvs(&both);
    check_lv(&lvs, &vg, "st", &backing, false);
    check_lv(&lvs, &vg, "span", &backing, false);

    // One disk alone: the VG's LVs are listed, each refused as missing a PV.
    let lvs = reader_lvs(&both[..1]);
    assert_eq!(lvs.len(), 2);
    for lv in &lvs {
        let e = lv.dev.as_ref().err().expect("refused");
        assert!(e.contains("missing from the disks given"), "{e}");
        assert!(lv.size > 0);
    }
}

/// The committed metadata text's (offset, size) in the first metadata area, and the
/// area's size, as the image file holds them.
fn raw_locn(img: &Path) -> (u64, u64, u64) {
    let mut h = [0u8; 64];
    std::fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut h, 4096)
        .unwrap();
    let u = |a: usize| u64::from_le_bytes(h[a..a + 8].try_into().unwrap());
    (u(40), u(48), u(32))
}

#[test]
fn metadata_wrapped_around_by_the_tools() {
    if !have_lvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pv.img");
    sparse(&img, 16);
    let lo = Loop::attach(&img, &[]);
    let vg = vg_name();
    let l = [&lo];
    // A small metadata area (60 KiB), then ~2 KiB of tags per commit until the newest
    // copy runs past the end of the area and continues after its header.
    let small = ["--metadatasize", "32k", "--dataalignment", "64k", &lo.dev];
    lvm("pvcreate", &small, &l);
    lvm("vgcreate", &["-s", "64k", &vg, &lo.dev], &l);
    lvm("lvcreate", &["-an", "-Zn", "-L", "1M", "-n", "lv", &vg], &l);
    let mut round = 0;
    loop {
        let (off, size, area) = raw_locn(&img);
        if off + size > area {
            break;
        }
        round += 1;
        assert!(round < 20, "the metadata never wrapped around");
        let mut args = Vec::new();
        for j in 0..10 {
            args.push("--addtag".to_string());
            args.push(format!("r{round}t{j}{}", "x".repeat(200)));
        }
        args.push(vg.clone());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        lvm("vgchange", &args, &l);
    }
    let (path, at, len) = first_extent_at(
        &vg,
        "lv",
        &[Backing {
            lo: &lo,
            img: img.clone(),
            base: 0,
        }],
    );
    mkfs_at(&path, at, len);
    let pv = probe(&FileDisk::open(&img).unwrap()).unwrap().unwrap();
    let seqno = num(&lvm("vgs", &["--noheadings", "-o", "vg_seqno", &vg], &l));
    assert_eq!(pv.seqno, seqno);
    assert!(pv.metadata.contains(&format!("r{round}t9")));
    let backing = [Backing {
        lo: &lo,
        img: img.clone(),
        base: 0,
    }];
    let lvs = reader_lvs(&[(img.clone(), 0, 16 << 20)]);
    check_lv(&lvs, &vg, "lv", &backing, true);
}
