//! The native VM disk format readers, checked against qemu. Every image is made by
//! qemu-img (or written by qemu-io) from a raw image with random, repeated-byte, zero and
//! unallocated regions; it is backed up with the real binary and restored, and the
//! restored raw file must equal `qemu-img convert -O raw` of the source byte for byte
//! (sha256) and pass `qemu-img compare`. Bad input (missing extents and parents, truncated
//! and damaged files, encryption) is refused with a message naming the file, and no
//! snapshot is written.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A mixed-content raw image of `size` bytes converted to `fmt` with `opts`.
fn source(env: &Env, name: &str, size: u64, fmt: &str, opts: &[&str]) -> PathBuf {
    let raw = env.path(&format!("{name}.raw"));
    make_mixed_image(&raw, size, 7);
    let dir = env.path(&format!("src-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join(name);
    convert_raw(&raw, fmt, opts, &img);
    std::fs::remove_file(&raw).unwrap();
    img
}

/// Backs `src` up as VM `vm`, restores the snapshot and checks it against qemu's reading
/// of the source (qemu format name `fmt`; cairn calls it `format`). Returns the report.
fn roundtrip(env: &Env, vm: &str, src: &Path, fmt: &str, format: &str) -> serde_json::Value {
    let report = env.backup(vm, &[src], &[]);
    let id = report["snapshot"].as_str().unwrap().to_string();
    let out = env.path(&format!("restore-{}", &id[..8]));
    let name = src.file_name().unwrap().to_str().unwrap();
    let restored_at = |extra: &[&str]| -> PathBuf {
        let mut args = vec!["restore", &id[..12], "--target", s(&out), "--json"];
        args.extend_from_slice(extra);
        let r: serde_json::Value = serde_json::from_str(&env.ok(&args)).unwrap();
        PathBuf::from(r["disks"][0]["path"].as_str().unwrap())
    };
    check_native(
        &restored_at(&[]),
        src,
        fmt,
        report["logical_bytes"].as_u64().unwrap(),
    );
    let restored = restored_at(&["--format", "raw"]);
    let reference = env.path(&format!("qemu-{}.raw", &id[..8]));
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    if report["logical_bytes"].as_u64().unwrap() <= 256 * MIB {
        qemu_raw(fmt, src, &reference);
        let want = sha256(&reference);
        assert_eq!(
            sha256(&restored),
            want,
            "{name} ({fmt}): the restore differs from qemu's reading of the source"
        );
    } else {
        // Hashing GiBs of holes takes longer than the rest of the test: compare the
        // sizes, then the bytes with qemu-img compare, which skips holes on both sides.
        qemu_raw(fmt, src, &reference);
        assert_eq!(len(&restored), len(&reference), "{name}: restored size");
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "raw",
            s(&restored),
            "-F",
            "raw",
            s(&reference),
        ]);
    }
    assert_eq!(len(&restored), report["logical_bytes"].as_u64().unwrap());
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "raw",
        s(&restored),
        "-F",
        fmt,
        s(src),
    ]);
    std::fs::remove_file(&reference).unwrap();

    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap();
    assert_eq!(snap["disks"][0]["format"], format, "{snap}");
    report
}

/// A disk restored in its native form: qcow2 and VMDK come back as such (flattened, no
/// backing file), clean by `qemu-img check`, the right virtual size, the source's guest
/// content; VHD and VHDX come back raw.
fn check_native(restored: &Path, src: &Path, fmt: &str, size: u64) {
    let out_fmt = match fmt {
        "qcow2" | "vmdk" => fmt,
        _ => "raw",
    };
    let o = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", s(restored)])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["format"], out_fmt, "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
    assert!(info.get("backing-filename").is_none(), "{info}");
    if out_fmt != "raw" {
        qemu_img(&["check", "-q", "-f", out_fmt, s(restored)]);
    }
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        out_fmt,
        s(restored),
        "-F",
        fmt,
        s(src),
    ]);
    std::fs::remove_file(restored).unwrap();
}

/// The format round trip of one qemu-img subformat of a 96 MiB mixed image; holes must
/// not be read.
fn check_format(fmt: &str, format: &str, opts: &[&str], name: &str) {
    let env = Env::new();
    env.init(&[]);
    let img = source(&env, name, 96 * MIB, fmt, opts);
    let r = roundtrip(&env, "vm", &img, fmt, format);
    assert!(
        r["holes_skipped"].as_u64().unwrap() > 64 * MIB,
        "unallocated space was read: {r}"
    );
    assert!(r["bytes_read"].as_u64().unwrap() < 24 * MIB, "{r}");
}

#[test]
fn vmdk_monolithic_flat() {
    check_format(
        "vmdk",
        "vmdk",
        &["-o", "subformat=monolithicFlat"],
        "flat.vmdk",
    );
}

#[test]
fn vmdk_two_gb_max_extent_flat() {
    check_format(
        "vmdk",
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentFlat"],
        "f2g.vmdk",
    );
}

#[test]
fn vmdk_monolithic_sparse() {
    check_format(
        "vmdk",
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
        "sparse.vmdk",
    );
}

#[test]
fn vmdk_two_gb_max_extent_sparse() {
    check_format(
        "vmdk",
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentSparse"],
        "s2g.vmdk",
    );
}

#[test]
fn vmdk_stream_optimized() {
    check_format(
        "vmdk",
        "vmdk",
        &["-o", "subformat=streamOptimized"],
        "stream.vmdk",
    );
}

#[test]
fn qcow2_v2() {
    check_format("qcow2", "qcow2", &["-o", "compat=0.10"], "v2.qcow2");
}

#[test]
fn qcow2_v3() {
    check_format("qcow2", "qcow2", &["-o", "compat=1.1"], "v3.qcow2");
}

#[test]
fn qcow2_zlib_compressed() {
    check_format("qcow2", "qcow2", &["-c"], "zlib.qcow2");
}

#[test]
fn qcow2_zstd_compressed() {
    check_format(
        "qcow2",
        "qcow2",
        &["-c", "-o", "compression_type=zstd"],
        "zstd.qcow2",
    );
}

#[test]
fn qcow2_extended_l2_small_clusters() {
    check_format(
        "qcow2",
        "qcow2",
        &["-o", "extended_l2=on,cluster_size=32k"],
        "subclusters.qcow2",
    );
}

#[test]
fn vhd_dynamic() {
    check_format("vpc", "vhd", &["-o", "subformat=dynamic"], "dyn.vhd");
}

#[test]
fn vhd_fixed() {
    // A fixed VHD has no header: cairn recognises it by the footer in its last sector.
    check_format("vpc", "vhd", &["-o", "subformat=fixed"], "fixed.vhd");
}

#[test]
fn vhdx_dynamic() {
    check_format("vhdx", "vhdx", &["-o", "subformat=dynamic"], "dyn.vhdx");
}

#[test]
fn vhdx_fixed() {
    check_format("vhdx", "vhdx", &["-o", "subformat=fixed"], "fixed.vhdx");
}

/// Disks over 2 GiB split into several extent files; data straddles the extent boundary.
/// A write to the second extent file alone (not the descriptor) is noticed as a change.
#[test]
fn vmdk_two_gb_extents_span_files() {
    let env = Env::new();
    env.init(&[]);
    let raw = env.path("big.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(2200 * MIB)
        .unwrap();
    qemu_write(&raw, 0x31, 0, MIB);
    qemu_write(&raw, 0x32, 2047 * MIB + 4096, 2 * MIB);
    qemu_write(&raw, 0x33, 2199 * MIB, MIB);
    for sub in ["twoGbMaxExtentFlat", "twoGbMaxExtentSparse"] {
        let dir = env.path(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("big.vmdk");
        let opt = format!("subformat={sub}");
        convert_raw(&raw, "vmdk", &["-o", &opt], &img);
        let extents = std::fs::read_dir(&dir).unwrap().count() - 1;
        assert_eq!(extents, 2, "{sub}: expected two extent files");
        let r = roundtrip(&env, sub, &img, "vmdk", "vmdk");
        assert_eq!(r["logical_bytes"], 2200 * MIB);
        assert!(r["bytes_read"].as_u64().unwrap() < 16 * MIB, "{r}");
    }
    // Unchanged: reused without reading. Then the second flat extent alone changes.
    let img = env.path("twoGbMaxExtentFlat").join("big.vmdk");
    let again = env.backup("twoGbMaxExtentFlat", &[&img], &[]);
    assert_eq!(again["disks_unchanged"], 1, "{again}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = env.path("twoGbMaxExtentFlat").join("big-f002.vmdk");
    qemu_write(&second, 0x44, 100 * MIB, MIB);
    let r = roundtrip(&env, "twoGbMaxExtentFlat", &img, "vmdk", "vmdk");
    assert_eq!(
        r["disks_unchanged"], 0,
        "a changed extent file went unnoticed: {r}"
    );
}

/// A renamed monolithicSparse file still opens: its embedded descriptor names the old
/// file name, which must not matter.
#[test]
fn vmdk_renamed_monolithic_sparse() {
    let env = Env::new();
    env.init(&[]);
    let img = source(
        &env,
        "old.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let renamed = img.with_file_name("new-name.vmdk");
    std::fs::rename(&img, &renamed).unwrap();
    roundtrip(&env, "vm", &renamed, "vmdk", "vmdk");
}

/// VMware writes stream-optimized disks in one pass: the header's grain directory offset
/// is "at end" (all ones) and a footer after the data holds the real one. qemu writes the
/// directory up front, so the qemu-made stream is rewritten to VMware's layout (header
/// offset set to all ones, footer marker + footer + end-of-stream marker appended), and
/// the result is checked against qemu's own reading of that file.
#[test]
fn vmdk_stream_optimized_with_footer() {
    let env = Env::new();
    env.init(&[]);
    let img = source(
        &env,
        "footer.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=streamOptimized"],
    );
    let mut b = std::fs::read(&img).unwrap();
    b.resize(b.len().div_ceil(512) * 512, 0);
    let header = b[..512].to_vec();
    b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut marker = vec![0u8; 512];
    marker[..8].copy_from_slice(&1u64.to_le_bytes());
    marker[12..16].copy_from_slice(&3u32.to_le_bytes()); // footer marker
    b.extend_from_slice(&marker);
    b.extend_from_slice(&header);
    b.extend_from_slice(&[0u8; 512]); // end-of-stream marker
    std::fs::write(&img, &b).unwrap();
    roundtrip(&env, "vm", &img, "vmdk", "vmdk");
}

/// A VMDK delta chain as qemu makes it: grains the child does not hold come from the
/// parent, and the grandchild's from either.
#[test]
fn vmdk_delta_chain() {
    let env = Env::new();
    env.init(&[]);
    let base = source(
        &env,
        "base.vmdk",
        96 * MIB,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let dir = base.parent().unwrap();
    let child = dir.join("child.vmdk");
    let grandchild = dir.join("grandchild.vmdk");
    // Relative parent names, as a VM folder has them.
    create_overlay(dir, "vmdk", "base.vmdk", "child.vmdk");
    for cmd in [
        "write -P 0x5a 1M 64k",
        "write -P 0x5b 33M 3M",
        "write -P 0x5c 90M 70000",
    ] {
        sh("qemu-io", &["-f", "vmdk", "-c", cmd, s(&child)]);
    }
    roundtrip(&env, "child", &child, "vmdk", "vmdk");
    create_overlay(dir, "vmdk", "child.vmdk", "grandchild.vmdk");
    sh(
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x77 34M 4096", s(&grandchild)],
    );
    let r = roundtrip(&env, "grandchild", &grandchild, "vmdk", "vmdk");
    // The allocation map is the union over the chain: base data plus the deltas'.
    assert!(r["bytes_read"].as_u64().unwrap() > 12 * MIB, "{r}");
}

/// qcow2 over a qcow2 backing file, changed with qemu-io: data written, a zero write
/// hiding backing data, untouched clusters read through. A later change to the backing
/// file alone makes the overlay count as changed.
#[test]
fn qcow2_backing_chain() {
    let env = Env::new();
    env.init(&[]);
    let base = source(&env, "base.qcow2", 96 * MIB, "qcow2", &[]);
    let top = base.with_file_name("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    for cmd in [
        "write -P 0x5a 1M 100k",
        "write -z 10M 1M",
        "write -P 0x11 95M 512k",
        "write -P 0x12 60M 64k",
    ] {
        sh("qemu-io", &["-f", "qcow2", "-c", cmd, s(&top)]);
    }
    roundtrip(&env, "vm", &top, "qcow2", "qcow2");
    let again = env.backup("vm", &[&top], &[]);
    assert_eq!(again["disks_unchanged"], 1, "{again}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    sh(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x99 50M 1M", s(&base)],
    );
    let r = roundtrip(&env, "vm", &top, "qcow2", "qcow2");
    assert_eq!(
        r["disks_unchanged"], 0,
        "a changed backing file went unnoticed: {r}"
    );
}

/// A qcow2 overlay on a raw backing file (backing format raw).
#[test]
fn qcow2_over_raw_backing() {
    let env = Env::new();
    env.init(&[]);
    let raw = env.path("base.img");
    make_mixed_image(&raw, 64 * MIB, 3);
    let top = env.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.img",
        "-F",
        "raw",
        s(&top),
    ]);
    sh(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x42 2M 3M", s(&top)],
    );
    roundtrip(&env, "vm", &top, "qcow2", "qcow2");
}

/// One guest disk (GPT + ext4 made by mkfs.ext4 -d) in every container cairn reads, in one
/// repository: after the first, each copy adds under 1 % of what the first stored. Chunks
/// depend only on the bytes the guest sees (cut rule 2: holes are 4 KiB zero blocks,
/// whatever the container allocated), not on qcow2 cluster sizes, VHD's 2 MiB blocks or
/// VMDK grains.
#[test]
fn one_guest_in_every_format_adds_under_one_percent() {
    let env = Env::new();
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 40, 5);
    let raw = env.path("guest.img");
    make_ext4_image(&raw, 256 * MIB, &tree);
    let first = env.backup("as-raw", &[&raw], &[]);
    let new1 = first["bytes_new"].as_u64().unwrap();
    assert!(new1 > 20 * MIB, "{first}");
    let variants: &[(&str, &str, &str)] = &[
        ("qcow2", "qcow2-64k.qcow2", "cluster_size=65536"),
        ("qcow2", "qcow2-4k.qcow2", "cluster_size=4096"),
        ("qcow2", "qcow2-2m.qcow2", "cluster_size=2097152"),
        ("vmdk", "sparse.vmdk", "subformat=monolithicSparse"),
        ("vmdk", "stream.vmdk", "subformat=streamOptimized"),
        ("vmdk", "flat.vmdk", "subformat=monolithicFlat"),
        ("vmdk", "split.vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vpc", "dynamic.vhd", "subformat=dynamic,force_size=on"),
        ("vpc", "fixed.vhd", "subformat=fixed,force_size=on"),
        ("vhdx", "dynamic.vhdx", "subformat=dynamic"),
        ("vhdx", "fixed.vhdx", "subformat=fixed"),
    ];
    let mut added = Vec::new();
    for (i, (fmt, name, opts)) in variants.iter().enumerate() {
        let dir = env.path(&format!("v{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join(name);
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            fmt,
            "-o",
            opts,
            s(&raw),
            s(&img),
        ]);
        let r = env.backup(&format!("as-{name}"), &[&img], &[]);
        assert_eq!(r["logical_bytes"], 256 * MIB, "{name}: {r}");
        added.push((name.to_string(), r["bytes_new"].as_u64().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // A block device holding the same bytes, where loop devices can be made (root).
    let loopdev = Command::new("losetup")
        .args(["--find", "--show", "--read-only", s(&raw)])
        .output();
    match loopdev {
        Ok(o) if o.status.success() => {
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let r = env.run(&["backup", "--json", "--vm", "as-device", &dev]);
            sh("losetup", &["-d", &dev]);
            assert!(r.status.success(), "{}", stderr(&r));
            let r: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
            added.push((dev, r["bytes_new"].as_u64().unwrap()));
        }
        _ => eprintln!(
            "SKIPPED: the block-device copy of this test (losetup failed: run as root with loop devices)"
        ),
    }
    for (name, new) in &added {
        assert!(
            new * 100 < new1,
            "the guest as {name} added {new} bytes, more than 1 % of the first copy's {new1}; all: {added:?}"
        );
    }
    eprintln!("first copy stored {new1} bytes; the others added {added:?}");
}

/// Runs a backup of `img` that must fail, naming the file and leaving no snapshot.
fn refused(env: &Env, img: &Path, needles: &[&str]) -> String {
    let o = env.run(&["backup", "--vm", "bad", s(img)]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{} was accepted: {e}", img.display());
    for n in needles {
        assert!(e.contains(n), "the error does not say {n:?}: {e}");
    }
    let snaps = std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count());
    assert_eq!(snaps, 0, "a snapshot was written");
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn descriptor_naming_a_missing_extent_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = source(
        &env,
        "m.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentSparse"],
    );
    std::fs::remove_file(img.with_file_name("m-s001.vmdk")).unwrap();
    refused(&env, &img, &["m.vmdk", "m-s001.vmdk", "cannot be opened"]);
}

#[test]
fn truncated_sparse_vmdk_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = source(
        &env,
        "t.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    refused(
        &env,
        &img,
        &["t.vmdk", "past the end of the file", "truncated"],
    );
}

#[test]
fn truncated_stream_optimized_vmdk_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = source(
        &env,
        "ts.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=streamOptimized"],
    );
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 3).unwrap();
    refused(&env, &img, &["ts.vmdk", "truncated"]);
}

/// An L2 entry overwritten with an offset far past the end of the file.
#[test]
fn qcow2_broken_l2_entry_is_refused() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    env.init(&[]);
    let img = source(&env, "broken.qcow2", 64 * MIB, "qcow2", &[]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut h = [0u8; 48];
    f.read_exact_at(&mut h, 0).unwrap();
    let l1_offset = u64::from_be_bytes(h[40..48].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, l1_offset).unwrap();
    let l2_offset = u64::from_be_bytes(e) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2_offset, 0);
    // Guest cluster 3 holds random data; point it at 1 TiB (copied flag kept).
    let bad = (1u64 << 63) | (1 << 40);
    f.write_all_at(&bad.to_be_bytes(), l2_offset + 3 * 8)
        .unwrap();
    refused(
        &env,
        &img,
        &[
            "broken.qcow2",
            "L2 table 0 entry 3",
            "past the end of the file",
        ],
    );
}

#[test]
fn truncated_qcow2_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = source(&env, "short.qcow2", 64 * MIB, "qcow2", &[]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(2 * MIB).unwrap();
    refused(&env, &img, &["short.qcow2", "past the end of the file"]);
}

#[test]
fn vmdk_delta_with_missing_parent_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let base = source(
        &env,
        "parent.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let child = base.with_file_name("delta.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        s(&base),
        "-F",
        "vmdk",
        s(&child),
    ]);
    std::fs::remove_file(&base).unwrap();
    refused(&env, &child, &["delta.vmdk", "parent.vmdk", "parent"]);
}

#[test]
fn vmdk_delta_whose_parent_changed_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let base = source(
        &env,
        "p.vmdk",
        64 * MIB,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
    );
    let child = base.with_file_name("d.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        s(&base),
        "-F",
        "vmdk",
        s(&child),
    ]);
    // Writing to the parent gives it a new CID: the delta no longer matches it.
    sh(
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 1 0 4096", s(&base)],
    );
    refused(&env, &child, &["d.vmdk", "CID"]);
}

#[test]
fn qcow2_with_missing_backing_file_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let top = env.path("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        "-u",
        s(&top),
        "64M",
    ]);
    refused(&env, &top, &["over.qcow2", "gone.qcow2", "backing"]);
}

#[test]
fn encrypted_qcow2_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("secret.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=abc",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        s(&img),
        "64M",
    ]);
    refused(&env, &img, &["secret.qcow2", "encrypted"]);
}

#[test]
fn qcow2_with_external_data_file_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("ext.qcow2");
    let data = env.path("ext.data");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&img),
        "64M",
    ]);
    refused(&env, &img, &["ext.qcow2", "external data file"]);
}

/// Formats cairn does not read are refused by name with the conversion to run (exit 2).
#[test]
fn unsupported_formats_are_refused_by_name() {
    let env = Env::new();
    env.init(&[]);
    for (fmt, name, kind) in [("qed", "disk.qed", "QED"), ("vdi", "disk.vdi", "VDI")] {
        let img = env.path(name);
        qemu_img(&["create", "-q", "-f", fmt, s(&img), "64M"]);
        let o = env.run(&["backup", "--vm", "x", s(&img)]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{name} is a {kind} image")) && e.contains("qemu-img convert"),
            "{e}"
        );
    }
    let snaps = std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count());
    assert_eq!(snaps, 0);
}

/// Two qcow2 images naming each other as backing file (made with `rebase -u`).
#[test]
fn qcow2_backing_loop_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let a = env.path("a.qcow2");
    let b = env.path("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "64M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    let e = refused(&env, &b, &["b.qcow2", "loops back"]);
    assert!(e.len() < 2000, "{e}");
}
