//! The restore-side image writers, checked with the tools a hypervisor admin trusts: data
//! is written the way restore writes it (pack order, many threads, never a hole), then
//! `qemu-img check` must find no errors or leaks, `qemu-img info` must see the right format
//! and size, `qemu-img compare` must find the guest content equal to a raw reference, and
//! cairn's own reader must read the same bytes back, with unwritten space left unallocated.

mod common;

use cairn::image::{self, OutFormat};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// qcow2 cluster and VMDK grain size of the writers.
const CLUSTER: u64 = 64 * KIB;

/// One restored chunk: `len` bytes of noise from `seed` at guest offset `off`.
#[derive(Clone, Copy, Debug)]
struct Run {
    off: u64,
    len: u64,
    seed: u64,
}

impl Run {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len as usize];
        common::noise(&mut b, self.seed);
        b
    }

    fn end(&self) -> u64 {
        self.off + self.len
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Chunks for a disk of `size` bytes (at least 1 GiB), in the shuffled order a restore
/// fetches them: some at the very start and end, some straddling cluster, grain-table
/// (32 MiB) and L2-table (512 MiB) edges, a stretch cut into tiny adjacent pieces that
/// share clusters (so threads race to allocate the same cluster), and random ones of
/// random lengths. None overlap; unwritten space stays a hole.
fn restore_runs(size: u64, seed: u64) -> Vec<Run> {
    let mut rng = Rng(seed | 1);
    let mut want: Vec<(u64, u64)> = vec![(0, 1 + rng.below(200 * KIB))];
    let end_len = 100_001;
    want.push((size - end_len, end_len));
    for k in [1, 2, 7, 20] {
        let edge = k * 32 * MIB;
        want.push((edge - 1 - rng.below(70_000), 1 + rng.below(200 * KIB)));
    }
    want.push((512 * MIB - 12_345, 300_000));
    let mut at = 200 * MIB + 777;
    while at < 202 * MIB {
        let len = 1 + rng.below(5000);
        want.push((at, len));
        at += len;
    }
    for _ in 0..200 {
        let len = match rng.below(10) {
            0 => 1,
            1 => 2 * MIB + rng.below(MIB),
            _ => 1 + rng.below(400 * KIB),
        };
        want.push((rng.below(size - len), len));
    }
    want.sort_unstable();
    let mut runs: Vec<Run> = Vec::new();
    for (off, len) in want {
        if runs.last().is_some_and(|r| r.end() > off) {
            continue;
        }
        runs.push(Run {
            off,
            len,
            seed: rng.next(),
        });
    }
    for i in (1..runs.len()).rev() {
        runs.swap(i, rng.below(i as u64 + 1) as usize);
    }
    runs
}

/// Writes `runs` into a new `format` image at `out` from 8 threads, and the same bytes
/// into the raw reference `reference`.
fn restore(format: OutFormat, out: &Path, reference: &Path, size: u64, runs: &[Run]) {
    let refile = File::create(reference).unwrap();
    refile.set_len(size).unwrap();
    let w = image::create(format, out, size).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(8)
        .build()
        .unwrap();
    pool.install(|| {
        runs.par_iter().for_each(|r| {
            let b = r.bytes();
            w.write_at(r.off, &b).unwrap();
            refile.write_all_at(&b, r.off).unwrap();
        })
    });
    w.finish().unwrap();
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// `qemu-img check` finds nothing wrong: no errors, no leaked clusters.
fn assert_qemu_check_clean(format: OutFormat, out: &Path) {
    let (ok, text) = qemu_img(&["check", "-f", format.name(), out.to_str().unwrap()]);
    assert!(ok, "qemu-img check {}: {text}", out.display());
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

fn qemu_info(format: OutFormat, out: &Path) -> serde_json::Value {
    let (ok, text) = qemu_img(&[
        "info",
        "--output=json",
        "-f",
        format.name(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// What qemu sees: the format (detected, not forced), the guest size, the same content as
/// the reference.
fn assert_qemu_agrees(format: OutFormat, out: &Path, reference: &Path, size: u64) {
    if format != OutFormat::Raw {
        assert_qemu_check_clean(format, out);
    }
    let (ok, text) = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["format"], format.name(), "{info}");
    assert_eq!(info["virtual-size"], size.next_multiple_of(512), "{info}");
    assert_same_guest(format, out, reference);
}

/// `qemu-img compare`: the guest sees exactly the reference's bytes.
fn assert_same_guest(format: OutFormat, out: &Path, reference: &Path) {
    let (same, text) = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        format.name(),
        reference.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(same, "qemu-img compare {}: {text}", out.display());
}

/// The guest size cairn reads: sparse formats count whole sectors (so does qemu for raw
/// files, but cairn's raw reader gives the exact file length).
fn guest_size(format: OutFormat, size: u64) -> u64 {
    match format {
        OutFormat::Raw => size,
        _ => size.next_multiple_of(512),
    }
}

/// Guest clusters any run touches: what a sparse format may allocate, and all it may.
fn touched_clusters(runs: &[Run]) -> u64 {
    let mut set = BTreeSet::new();
    for r in runs {
        set.extend(r.off / CLUSTER..=(r.end() - 1) / CLUSTER);
    }
    set.len() as u64
}

/// cairn reads back what was written, and reports as allocated every written range and
/// nothing beyond the clusters the writes touched.
fn assert_cairn_reads_back(format: OutFormat, out: &Path, reference: &Path, runs: &[Run]) {
    let img = image::open(out).unwrap();
    let refile = File::open(reference).unwrap();
    let size = refile.metadata().unwrap().len();
    assert_eq!(img.format(), format.name());
    assert_eq!(img.size(), guest_size(format, size));
    let alloc = img.allocated(0..img.size()).unwrap();
    let total: u64 = alloc.iter().map(|r| r.end - r.start).sum();
    assert!(
        total <= touched_clusters(runs) * CLUSTER,
        "{total} bytes allocated for {} touched clusters",
        touched_clusters(runs)
    );
    for r in runs {
        let covered: u64 = alloc
            .iter()
            .map(|a| a.end.min(r.end()).saturating_sub(a.start.max(r.off)))
            .sum();
        assert_eq!(covered, r.len, "run {r:?} not reported allocated");
    }
    let mut got = vec![0u8; 4 << 20];
    let mut want = vec![0u8; 4 << 20];
    for a in &alloc {
        let mut pos = a.start;
        while pos < a.end {
            let n = (a.end - pos).min(got.len() as u64) as usize;
            img.read_at(pos, &mut got[..n]).unwrap();
            let m = n.min(size.saturating_sub(pos) as usize);
            refile.read_exact_at(&mut want[..m], pos).unwrap();
            want[m..n].fill(0);
            assert!(
                got[..n] == want[..n],
                "bytes differ in {pos}..{}",
                pos + n as u64
            );
            pos += n as u64;
        }
    }
}

/// The file holds the data written and little else: holes stayed holes.
fn assert_sparse(out: &Path, size: u64, runs: &[Run]) {
    let used = common::allocated(out);
    let bound = touched_clusters(runs) * CLUSTER + MIB;
    assert!(
        used <= bound,
        "{} has {used} bytes allocated; the writes touched at most {bound}",
        out.display()
    );
    assert!(used < size / 4, "{used} of {size}");
}

/// A restore of a ~1 GiB disk in `format`, then everything a user would check of it.
fn round_trip(format: OutFormat, size: u64, seed: u64) {
    let env = common::Env::new();
    let out = env.path(&format!("restored.{}", format.extension()));
    let reference = env.path("reference.raw");
    let runs = restore_runs(size, seed);
    restore(format, &out, &reference, size, &runs);
    assert_qemu_agrees(format, &out, &reference, size);
    assert_cairn_reads_back(format, &out, &reference, &runs);
    assert_sparse(&out, size, &runs);
    assert_guest_can_write(format, &out, &reference);
}

/// The restored disk is a live disk: qemu writes into it (into allocated clusters, new
/// clusters, new L2 tables, zeroes a range), and it stays consistent and equal to the
/// reference given the same writes.
fn assert_guest_can_write(format: OutFormat, out: &Path, reference: &Path) {
    let writes = [
        "write -P 0x33 700M 3M",
        "write -P 0x44 12345 70000",
        "write -z 1000M 1M",
    ];
    for (img, fmt) in [(out, format.name()), (reference, "raw")] {
        let mut args = vec!["-f", fmt];
        for w in &writes {
            args.extend(["-c", w]);
        }
        args.push(img.to_str().unwrap());
        common::sh("qemu-io", &args);
    }
    if format != OutFormat::Raw {
        assert_qemu_check_clean(format, out);
    }
    assert_same_guest(format, out, reference);
}

/// 1 GiB plus 3 clusters and 7 sectors: crosses an L2 table (512 MiB), ends mid-cluster.
const ODD_SIZE: u64 = GIB + 3 * CLUSTER + 7 * 512;

#[test]
fn qcow2_restore_matches_qemu_and_cairn() {
    round_trip(OutFormat::Qcow2, ODD_SIZE, 1);
}

#[test]
fn vmdk_restore_matches_qemu_and_cairn() {
    round_trip(OutFormat::Vmdk, ODD_SIZE, 2);
}

#[test]
fn raw_restore_matches_qemu_and_cairn() {
    round_trip(OutFormat::Raw, ODD_SIZE + 12_345, 3);
}

/// The embedded descriptor is what VMware reads: monolithicSparse, one sparse extent of
/// the disk's sectors, SCSI adapter and geometry.
#[test]
fn vmdk_descriptor_says_monolithic_sparse() {
    let env = common::Env::new();
    let out = env.path("disk.vmdk");
    let w = image::create(OutFormat::Vmdk, &out, 100 * MIB).unwrap();
    w.write_at(5 * MIB, b"hello").unwrap();
    w.finish().unwrap();
    let info = qemu_info(OutFormat::Vmdk, &out);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["create-type"], "monolithicSparse", "{info}");
    assert_eq!(data["extents"][0]["cluster-size"], 65536, "{info}");
    let head = std::fs::read(&out).unwrap();
    let text = String::from_utf8_lossy(&head[512..512 * 21]);
    for line in [
        "createType=\"monolithicSparse\"",
        "RW 204800 SPARSE \"disk.vmdk\"",
        "ddb.adapterType = \"lsilogic\"",
        "ddb.geometry.heads = \"255\"",
        "ddb.geometry.cylinders = \"12\"",
        "ddb.virtualHWVersion",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

/// Sizes qemu counts in sectors: tiny, not a multiple of a sector, not of a cluster. The
/// guest is rounded up to whole sectors, the last byte is writable, a byte past the end is
/// refused with the file named.
#[test]
fn odd_and_tiny_sizes() {
    let env = common::Env::new();
    for format in [OutFormat::Qcow2, OutFormat::Vmdk, OutFormat::Raw] {
        for size in [0, 1000, 512, 10 * MIB + 1000, 3 * CLUSTER + 5 * 512] {
            let out = env.path(&format!("d{size}.{}", format.extension()));
            let reference = env.path("reference.raw");
            let runs: Vec<Run> = match size {
                0 => vec![],
                _ => vec![Run {
                    off: size - size.min(777),
                    len: size.min(777),
                    seed: size,
                }],
            };
            restore(format, &out, &reference, size, &runs);
            // qemu opens no empty VMDK, not even the one `qemu-img create -f vmdk x 0`
            // makes ("Unsupported image type 'monolithicSparse'"); cairn's reader does.
            if (format, size) != (OutFormat::Vmdk, 0) {
                assert_qemu_agrees(format, &out, &reference, size);
            }
            if size > 0 {
                assert_cairn_reads_back(format, &out, &reference, &runs);
            }
            let spare = env.path(&format!("past-end.{}", format.extension()));
            let w = image::create(format, &spare, size).unwrap();
            let err = w.write_at(size, b"x").unwrap_err().to_string();
            assert!(err.contains(spare.to_str().unwrap()), "{err}");
        }
    }
}

#[test]
fn cannot_create_names_the_file() {
    let env = common::Env::new();
    let out = env.path("missing/dir/disk.qcow2");
    for format in [OutFormat::Qcow2, OutFormat::Vmdk, OutFormat::Raw] {
        let err = image::create(format, &out, GIB).err().unwrap().to_string();
        assert!(err.contains(out.to_str().unwrap()), "{err}");
    }
}

/// Sizes a format cannot describe are refused before anything is written, with the way
/// out named: qcow2 past the 2 PiB qemu opens, VMDK whose grain tables alone would pass
/// the 2 TiB a sparse extent can address, anything past 64 PiB.
#[test]
fn sizes_a_format_cannot_hold_are_refused() {
    let env = common::Env::new();
    for (format, size) in [
        (OutFormat::Qcow2, 4u64 << 50),
        (OutFormat::Vmdk, 32 << 50),
        (OutFormat::Raw, 1 << 60),
    ] {
        let out = env.path(&format!("huge.{}", format.extension()));
        let err = image::create(format, &out, size).err().unwrap().to_string();
        assert!(err.contains(out.to_str().unwrap()), "{err}");
        assert!(!out.exists(), "{format:?}: {} was created", out.display());
        if format != OutFormat::Raw {
            assert!(err.contains("raw"), "{err}");
        }
    }
}

/// A few MiB written into a 64 GiB disk: the image stays a few MiB (plus, for VMDK, the
/// grain tables every sparse extent reserves, which stay holes), and qemu still agrees.
#[test]
fn big_mostly_empty_disks_stay_small() {
    let env = common::Env::new();
    let size = 64 * GIB;
    let runs = [
        (0, 300_000),
        (10 * GIB + 12_345, MIB),
        (32 * GIB - 4096, 8192),
        (size - 70_000, 70_000),
    ]
    .map(|(off, len)| Run {
        off,
        len,
        seed: off,
    });
    for format in [OutFormat::Qcow2, OutFormat::Vmdk, OutFormat::Raw] {
        let out = env.path(&format!("big.{}", format.extension()));
        let reference = env.path("big-reference.raw");
        restore(format, &out, &reference, size, &runs);
        assert_qemu_agrees(format, &out, &reference, size);
        assert_cairn_reads_back(format, &out, &reference, &runs);
        let used = common::allocated(&out);
        assert!(used < 4 * MIB, "{format:?}: {used} bytes allocated");
        if format != OutFormat::Raw {
            let len = std::fs::metadata(&out).unwrap().len();
            assert!(len < 16 * MIB, "{format:?}: file is {len} bytes");
        }
    }
}

/// The guest → host maps grow with the data, not with the disk: restoring scattered
/// chunks into 1 TiB qcow2 and VMDK disks (a dense map would take 64 MiB, 128 MiB with
/// 8-byte entries) stays within a few MiB of the test binary's own footprint. Measured in
/// a child process (this test binary, running [`memory_child`]), so other tests running
/// in parallel do not count.
#[test]
fn one_tib_disks_take_little_memory() {
    let env = common::Env::new();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "memory_child", "--ignored", "--nocapture"])
        .env("CAIRN_WRITER_CHILD_DIR", env.dir.path());
    let (status, peak_kib, text) = common::run_measured(cmd);
    assert!(status.success(), "{text}");
    assert!(
        text.contains("child done"),
        "the child test did not run: {text}"
    );
    eprintln!("peak RSS of the child: {peak_kib} KiB");
    assert!(peak_kib < 40 * 1024, "peak RSS {peak_kib} KiB");
    for format in [OutFormat::Qcow2, OutFormat::Vmdk] {
        let out = env.path(&format!("huge.{}", format.extension()));
        assert_qemu_check_clean(format, &out);
        let info = qemu_info(format, &out);
        assert_eq!(info["virtual-size"], 1u64 << 40, "{info}");
        let used = common::allocated(&out);
        assert!(used < 32 * MIB, "{format:?}: {used} bytes allocated");
    }
}

#[test]
#[ignore = "run by one_tib_disks_take_little_memory in a child process"]
fn memory_child() {
    let Some(dir) = std::env::var_os("CAIRN_WRITER_CHILD_DIR") else {
        return;
    };
    let size = 1u64 << 40;
    let chunk = vec![0x5au8; 256 * 1024];
    for format in [OutFormat::Qcow2, OutFormat::Vmdk] {
        let out = Path::new(&dir).join(format!("huge.{}", format.extension()));
        let w = image::create(format, &out, size).unwrap();
        (0..64u64).into_par_iter().for_each(|i| {
            let off = i * (size / 64) + i * 4097;
            w.write_at(off, &chunk).unwrap();
        });
        w.finish().unwrap();
    }
    println!("child done");
}
