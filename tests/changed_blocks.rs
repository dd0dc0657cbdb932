//! Changed-block backups: a raw and a qcow2 image changed with `qemu-io`, the changes given
//! as a map (or a qcow2 dirty bitmap, or a new top layer over an unchanged chain). The
//! backup reads only the changes, yet writes exactly the chunk tables a full read of the
//! same image writes, and restores bit for bit. Maps that do not fit fall back loudly.

mod common;
use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The chunk table ids of disk `disk` in snapshot `id` (read with the library).
fn tables(env: &Env, id: &str, disk: &str) -> Vec<Option<cairn::Id>> {
    std::env::set_var("CAIRN_CACHE_DIR", env.path("cache"));
    let repo = cairn::repo::Repository::open(&env.url, &|| Ok(env.password.clone())).unwrap();
    let (_, snap) = cairn::snapshot::resolve(&repo, id).unwrap();
    snap.disks
        .iter()
        .find(|d| d.name == *disk)
        .unwrap()
        .tables
        .clone()
}

/// Restores disk `disk` of snapshot `id` and checks it holds the bytes of raw image `want`.
fn restores_as(env: &Env, id: &str, disk: &str, want: &Path) {
    let out = env.path("out.img");
    env.ok(&["restore", &id[..12], "--disk", disk, "--target", s(&out)]);
    assert_eq!(sha256(&out), sha256(want), "{disk} of {id}");
    std::fs::remove_file(&out).unwrap();
}

fn qemu_io(fmt: &str, img: &Path, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), fmt.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(s(img).into());
    let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    sh("qemu-io", &a);
}

/// Writes as a guest would: a 2 MiB clustered change, scattered 4 KiB writes, 8 KiB
/// "database pages", zeros over data (a new zero run), data inside a hole, writes across
/// the 16 MiB segment edge and at the disk's end. Returns qemu-io commands and the ranges.
fn changes(size: u64, seed: u64) -> (Vec<String>, Vec<(u64, u64)>) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut v: Vec<(u64, u64)> = vec![
        (5 * MIB, 2 * MIB),
        (16 * MIB - 6000, 9000),
        (size - 4096, 4096),
    ];
    for _ in 0..60 {
        v.push(((next() % (size / 4096 - 2)) * 4096, 4096));
    }
    for _ in 0..20 {
        v.push(((next() % (size / 8192 - 2)) * 8192, 8192));
    }
    for _ in 0..10 {
        v.push((next() % (size - 70_000), 1 + next() % 60_000));
    }
    let mut cmds = Vec::new();
    for (i, (off, len)) in v.iter().enumerate() {
        let pattern = match i % 7 {
            0 => "-z".to_string(),
            _ => format!("-P 0x{:02x}", 1 + (i % 250)),
        };
        let cmd = if pattern == "-z" {
            format!("write -z {off} {len}")
        } else {
            format!("write {pattern} {off} {len}")
        };
        cmds.push(cmd);
    }
    (cmds, v)
}

fn map_json(ranges: &[(u64, u64)]) -> String {
    let areas: Vec<String> = ranges
        .iter()
        .map(|(o, l)| format!("{{\"start\":{o},\"length\":{l}}}"))
        .collect();
    format!(
        "{{\"startOffset\":0,\"changeId\":\"52 10 7a/9\",\"changedArea\":[{}]}}",
        areas.join(",")
    )
}

#[test]
fn raw_image_changed_blocks_equal_a_full_read() {
    let cdc: &[&str] = &[];
    let fixed: &[&str] = &["--chunker", "fixed", "--chunk-size", "64K"];
    let small: &[&str] = &["--chunk-size", "8K"];
    for (init, seed) in [
        (cdc, 1u64),
        (fixed, 2),
        (cdc, 3),
        (small, 4),
        (cdc, 5),
        (small, 6),
    ] {
        let env = Env::new();
        env.init(init);
        let img = env.path("disk0.img");
        make_mixed_image(&img, 96 * MIB, seed);
        env.backup("db01", &[&img], &[]);
        let (cmds, ranges) = changes(96 * MIB, seed);
        qemu_io("raw", &img, &cmds);
        let map = env.path("cbt.json");
        std::fs::write(&map, map_json(&ranges)).unwrap();
        let r = env.backup("db01", &[&img], &["--changed-extents", s(&map)]);
        let cb = &r["items"][0]["changed_blocks"];
        assert_eq!(cb["map"], "extents", "{r}");
        let changed = cb["changed"].as_u64().unwrap();
        let read = cb["bytes_read"].as_u64().unwrap();
        assert!(read <= changed, "read {read} of {changed} changed: {r}");
        assert!(cb["bytes_skipped"].as_u64().unwrap() > 80 * MIB, "{r}");
        let inc = r["snapshot"].as_str().unwrap().to_string();
        assert_tables_of_a_full_read(&env, &img, &inc, &format!("seed {seed}"));
        restores_as(&env, &inc, "disk0.img", &img);
    }
}

/// A qcow2 image with a persistent dirty bitmap added right after a backup.
#[test]
fn qcow2_dirty_bitmap() {
    let env = Env::new();
    env.init(&[]);
    let raw = env.path("src.raw");
    make_mixed_image(&raw, 80 * MIB, 3);
    let img = env.path("disk0.qcow2");
    convert_raw(&raw, "qcow2", &[], &img);
    env.backup("vm", &[&img], &[]);
    qemu_img(&["bitmap", "--add", s(&img), "nightly"]);
    let (cmds, _) = changes(80 * MIB, 3);
    qemu_io("qcow2", &img, &cmds);
    let r = env.backup("vm", &[&img], &["--bitmap", "nightly"]);
    let cb = &r["items"][0]["changed_blocks"];
    assert_eq!(
        (cb["map"].as_str(), cb["id"].as_str()),
        (Some("bitmap"), Some("nightly")),
        "{r}"
    );
    let inc = r["snapshot"].as_str().unwrap().to_string();
    let full = env.backup("vm", &[&img], &["--force-read"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        tables(&env, &inc, "disk0.qcow2"),
        tables(&env, &full, "disk0.qcow2")
    );
    let want = env.path("want.raw");
    qemu_raw("qcow2", &img, &want);
    restores_as(&env, &inc, "disk0.qcow2", &want);
}

/// The nightly external-snapshot pattern: a new top layer over a chain whose files did not
/// change since the last backup needs no map.
#[test]
fn new_top_layer_over_an_unchanged_chain() {
    let env = Env::new();
    env.init(&[]);
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = env.path("src.raw");
    make_mixed_image(&raw, 64 * MIB, 4);
    convert_raw(&raw, "qcow2", &[], &dir.join("base.qcow2"));
    env.backup("vm", &[&dir.join("base.qcow2")], &[]);
    create_overlay(&dir, "qcow2", "base.qcow2", "top.qcow2");
    let (cmds, _) = changes(64 * MIB, 4);
    qemu_io("qcow2", &dir.join("top.qcow2"), &cmds);
    let r = env.backup("vm", &[&dir.join("top.qcow2")], &[]);
    let cb = &r["items"][0]["changed_blocks"];
    assert_eq!(cb["map"], "chain", "{r}");
    assert!(cb["bytes_read"].as_u64().unwrap() < 16 * MIB, "{r}");
    let inc = r["snapshot"].as_str().unwrap().to_string();
    let full = env.backup("vm", &[&dir.join("top.qcow2")], &["--force-read"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        tables(&env, &inc, "top.qcow2"),
        tables(&env, &full, "top.qcow2")
    );
}

/// A map that misses a write: `--verify-changed` reads everything, stores the full read,
/// and fails naming the range.
#[test]
fn verify_changed_catches_a_map_that_misses_a_change() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_mixed_image(&img, 64 * MIB, 5);
    env.backup("v", &[&img], &[]);
    qemu_write(&img, 0x33, 2 * MIB, 4096);
    qemu_write(&img, 0x44, 40 * MIB, 4096);
    let map = env.path("m.json");
    std::fs::write(
        &map,
        format!("[{{\"offset\":{},\"length\":4096}}]", 2 * MIB),
    )
    .unwrap();
    let o = env.run(&[
        "backup",
        "--vm",
        "v",
        "--changed-extents",
        s(&map),
        "--verify-changed",
        s(&img),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("missed changes") && stderr(&o).contains("d.img: bytes 0.."),
        "{}",
        stderr(&o)
    );
    let out = env.path("o.img");
    env.ok(&[
        "restore",
        "v:latest",
        "--disk",
        "d.img",
        "--target",
        s(&out),
    ]);
    assert_eq!(
        sha256(&out),
        sha256(&img),
        "the snapshot written is the full read"
    );
}

/// Maps that cannot be used fall back to a full read with the reason, or are refused.
#[test]
fn unusable_maps_fall_back_with_the_reason() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_mixed_image(&img, 64 * MIB, 6);
    let map = env.path("m.json");
    std::fs::write(&map, "[{\"offset\":0,\"length\":4096}]").unwrap();
    let back = |extra: &[&str]| {
        let mut a = vec!["backup", "--json", "--vm", "v"];
        a.extend_from_slice(extra);
        a.push(s(&img));
        env.run(&a)
    };
    // No parent yet.
    let o = back(&["--changed-extents", s(&map)]);
    assert!(
        o.status.success() && stderr(&o).contains("no parent snapshot"),
        "{}",
        stderr(&o)
    );
    // Malformed JSON, a map past the disk's end (the disk changes each time, or the
    // unchanged-disk check would reuse it unread).
    qemu_write(&img, 0x21, 0, 4096);
    std::fs::write(&map, "[{\"offset\":0,").unwrap();
    let o = back(&["--changed-extents", s(&map)]);
    assert!(
        o.status.success() && stderr(&o).contains("not JSON"),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        &map,
        format!("[{{\"offset\":{},\"length\":8192}}]", 64 * MIB - 4096),
    )
    .unwrap();
    qemu_write(&img, 0x22, 0, 4096);
    let o = back(&["--changed-extents", s(&map)]);
    assert!(stderr(&o).contains("not this disk's map"), "{}", stderr(&o));
    // A disk that grew: the parent's map does not fit.
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(72 * MIB)
        .unwrap();
    std::fs::write(&map, "[{\"offset\":0,\"length\":4096}]").unwrap();
    let o = back(&["--changed-extents", s(&map)]);
    assert!(stderr(&o).contains("another size"), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["items"][0].get("changed_blocks").is_none(), "{r}");
}

/// A dirty bitmap flagged in use (qemu crashed, or runs the guest) is never trusted.
#[test]
fn an_in_use_bitmap_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let raw = env.path("src.raw");
    make_mixed_image(&raw, 64 * MIB, 7);
    let img = env.path("d.qcow2");
    convert_raw(&raw, "qcow2", &[], &img);
    env.backup("v", &[&img], &[]);
    qemu_img(&["bitmap", "--add", s(&img), "b"]);
    set_bitmap_in_use(&img);
    let o = env.run(&["backup", "--vm", "v", "--bitmap", "b", s(&img)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("in use") && stderr(&o).contains("whole disk"),
        "{}",
        stderr(&o)
    );
}

/// Sets the in_use flag of the first bitmap, as a qemu that died while running would leave it.
fn set_bitmap_in_use(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut h = vec![0u8; 65536];
    f.read_at(&mut h, 0).unwrap();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let mut pos = be32(&h, 100) as usize;
    loop {
        let (ty, len) = (be32(&h, pos), be32(&h, pos + 4) as usize);
        assert_ne!(ty, 0, "no bitmaps extension");
        if ty == 0x2385_2875 {
            let dir = be64(&h, pos + 8 + 16);
            let mut flags = [0u8; 4];
            f.read_at(&mut flags, dir + 12).unwrap();
            flags[3] |= 1;
            f.write_all_at(&flags, dir + 12).unwrap();
            return;
        }
        pos = (pos + 8 + len).div_ceil(8) * 8;
    }
}

#[allow(dead_code)]
/// Backs `img` up again with `--force-read` and asserts that snapshot `inc` has exactly the
/// tables of that full read (printing the pieces that differ first).
fn assert_tables_of_a_full_read(env: &Env, img: &Path, inc: &str, what: &str) {
    let f = env.backup("db01", &[img], &["--force-read"]);
    let full = f["snapshot"].as_str().unwrap();
    let (a, b) = (
        tables(env, inc, "disk0.img"),
        tables(env, full, "disk0.img"),
    );
    if a != b {
        diff_tables(env, inc, full, "disk0.img");
    }
    assert_eq!(a, b, "{what}");
}

fn diff_tables(env: &Env, a: &str, b: &str, disk: &str) {
    std::env::set_var("CAIRN_CACHE_DIR", env.path("cache"));
    let repo = cairn::repo::Repository::open(&env.url, &|| Ok(env.password.clone())).unwrap();
    let cache = repo.index_cache().unwrap();
    let r = cache.reader().unwrap();
    let ta = tables(env, a, disk);
    let tb = tables(env, b, disk);
    for (x, y) in ta.iter().zip(&tb) {
        let (Some(x), Some(y)) = (x, y) else { continue };
        let ea = cairn::snapshot::load_table(&repo, &r, x).unwrap().extents;
        let eb = cairn::snapshot::load_table(&repo, &r, y).unwrap().extents;
        let (mut oa, mut ob, mut i, mut j, mut shown) = (0u64, 0u64, 0, 0, 0);
        while i < ea.len() && j < eb.len() && shown < 12 {
            if oa == ob && ea[i] == eb[j] {
                oa += ea[i].len as u64;
                ob += eb[j].len as u64;
                i += 1;
                j += 1;
                continue;
            }
            eprintln!(
                "inc @{oa} len {} {:?} | full @{ob} len {} {:?}",
                ea[i].len,
                ea[i].id.is_some(),
                eb[j].len,
                eb[j].id.is_some()
            );
            shown += 1;
            if oa <= ob {
                oa += ea[i].len as u64;
                i += 1;
            } else {
                ob += eb[j].len as u64;
                j += 1;
            }
        }
    }
}

/// A disk read whole because its file changed takes the parent's cut points for the
/// segments whose bytes are the parent's (every chunk still hashed), and re-chunks the
/// others: the tables equal those of a read that trusts nothing of the parent.
#[test]
fn a_disk_read_whole_follows_the_parents_cuts_only_where_bytes_are_the_same() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("disk0.img");
    make_mixed_image(&img, 96 * MIB, 7);
    env.backup("db01", &[&img], &[]);
    // A page write into data in segment 0 and zeros over data in segment 2; segment 4 is
    // a hole, so segments 1, 3 and 5 are the parent's byte for byte.
    qemu_io(
        "raw",
        &img,
        &[
            format!("write -P 0x5a {} 4096", 11 * MIB + 12288),
            format!("write -z {} 65536", 40 * MIB + 65536),
        ],
    );
    let r = env.backup("db01", &[&img], &[]);
    assert_eq!(r["bytes_followed"], 48 * MIB, "{r}");
    let inc = r["snapshot"].as_str().unwrap().to_string();
    let f = env.backup("db01", &[&img], &["--force-read"]);
    assert_eq!(f["bytes_followed"], 0, "{f}");
    let full = f["snapshot"].as_str().unwrap().to_string();
    assert_eq!(
        tables(&env, &inc, "disk0.img"),
        tables(&env, &full, "disk0.img")
    );
    restores_as(&env, &inc, "disk0.img", &img);
}

/// Capping on changed-block nights: a segment that changes every night gains chunks in
/// each night's pack, so without capping the newest snapshot reads it from ever more
/// packs. Four nights of small writes leave four sparse night packs in segment 0; the
/// larger changes of nights 5 and 6 give capping a budget (here all of the changed bytes),
/// and it stores the sparse packs' chunks again, read from the repository, not the source.
/// The newest snapshot then needs fewer packs, restores bit for bit and still has a full
/// read's tables.
#[test]
fn changed_block_nights_keep_a_hot_segment_in_few_packs() {
    let mut packs = Vec::new();
    for budget in ["100%", "0"] {
        let env = Env::new();
        env.init(&[]);
        let img = env.path("disk0.img");
        make_random_image(&img, 32 * MIB, 32 * MIB, 7);
        env.backup("db01", &[&img], &["--rewrite-budget", budget]);
        let (mut rewritten, mut changed, mut last) = (0, 0, String::new());
        for night in 1..=6u64 {
            let off = night * 2 * MIB + 4096;
            let len = if night <= 4 { 4096 } else { MIB };
            let mut bytes = vec![0u8; len as usize];
            noise(&mut bytes, 100 + night);
            let new = env.path("new.bin");
            std::fs::write(&new, &bytes).unwrap();
            qemu_io("raw", &img, &[format!("write -s {} {off} {len}", s(&new))]);
            let map = env.path("cbt.json");
            std::fs::write(&map, map_json(&[(off, len)])).unwrap();
            let r = env.backup(
                "db01",
                &[&img],
                &["--changed-extents", s(&map), "--rewrite-budget", budget],
            );
            let cb = &r["items"][0]["changed_blocks"];
            assert_eq!(cb["bytes_read"].as_u64(), Some(len), "{r}");
            rewritten += r["bytes_rewritten"].as_u64().unwrap_or(0);
            changed += len;
            last = r["snapshot"].as_str().unwrap().to_string();
        }
        let check: serde_json::Value = serde_json::from_str(&env.ok(&["check", "--json"])).unwrap();
        assert_eq!(
            check["problems"].as_array().map(|p| p.len()),
            Some(0),
            "{check}"
        );
        let frag = check["fragmentation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| last.starts_with(f["snapshot"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("no fragmentation of {last}: {check}"))
            .clone();
        restores_as(&env, &last, "disk0.img", &img);
        let f = env.backup("db01", &[&img], &["--force-read", "--rewrite-budget", "0"]);
        assert_eq!(f["bytes_new"].as_u64(), Some(0), "{f}");
        assert_eq!(
            tables(&env, &last, "disk0.img"),
            tables(&env, f["snapshot"].as_str().unwrap(), "disk0.img")
        );
        if budget == "0" {
            assert_eq!(rewritten, 0);
        } else {
            assert!(
                rewritten > 0 && rewritten <= changed,
                "{rewritten} of {changed}"
            );
        }
        packs.push(frag["packs"].as_u64().unwrap());
    }
    assert!(
        packs[0] < packs[1],
        "capped {} vs uncapped {} packs",
        packs[0],
        packs[1]
    );
}

/// The data cut points of the first table of `disk` in snapshot `id`: offsets where a data
/// chunk ends and another data chunk starts.
fn data_cuts(env: &Env, id: &str, disk: &str) -> Vec<u64> {
    std::env::set_var("CAIRN_CACHE_DIR", env.path("cache"));
    let repo = cairn::repo::Repository::open(&env.url, &|| Ok(env.password.clone())).unwrap();
    let cache = repo.index_cache().unwrap();
    let r = cache.reader().unwrap();
    let t = tables(env, id, disk)[0].unwrap();
    let ext = cairn::snapshot::load_table(&repo, &r, &t).unwrap().extents;
    let (mut at, mut cuts) = (0u64, Vec::new());
    for w in ext.windows(2) {
        at += w[0].len as u64;
        if w[0].id.is_some() && w[1].id.is_some() {
            cuts.push(at);
        }
    }
    cuts
}

/// FastCDC decides a cut at offset c from the bytes before c and the byte at c, so a
/// change that starts exactly at one of the parent's cuts moves that cut: re-chunking
/// must start from the cut before it. Writes that start exactly at parent cuts (and one
/// that ends exactly at one) still give a full read's tables.
#[test]
fn a_change_starting_exactly_at_a_parent_cut_rechunks_from_the_cut_before() {
    // The case that matters most is a cut on a 4 KiB boundary (one in 4096), where the
    // block before the cut holds none of the changed bytes (segment edges, 16 MiB apart,
    // are cuts whatever the bytes): find an image that has one.
    let (env, img, cuts, aligned) = (12..60)
        .find_map(|seed| {
            let env = Env::new();
            env.init(&[]);
            let img = env.path("disk0.img");
            make_random_image(&img, 64 * MIB, 48 * MIB, seed);
            let first = env.backup("db01", &[&img], &[]);
            let cuts = data_cuts(&env, first["snapshot"].as_str().unwrap(), "disk0.img");
            let aligned = cuts
                .iter()
                .copied()
                .find(|c| c % 4096 == 0 && c % (16 * MIB) != 0)?;
            Some((env, img, cuts, aligned))
        })
        .expect("no image with a data cut on a 4 KiB boundary in 48 seeds");
    assert!(cuts.len() > 100, "{} cuts", cuts.len());
    let mut ranges = vec![(aligned, 4096)];
    let mut cmds = vec![format!("write -P 0x3c {aligned} 4096")];
    for (n, &c) in cuts.iter().step_by(cuts.len() / 12).take(12).enumerate() {
        if c.abs_diff(aligned) < 70_000 {
            continue;
        }
        let (off, len) = if n % 4 == 3 {
            (c - 300, 300)
        } else {
            (c, 1 + n as u64 * 97)
        };
        cmds.push(format!("write -P 0x{:02x} {off} {len}", 0x41 + n));
        ranges.push((off, len));
    }
    qemu_io("raw", &img, &cmds);
    let map = env.path("cbt.json");
    std::fs::write(&map, map_json(&ranges)).unwrap();
    let r = env.backup("db01", &[&img], &["--changed-extents", s(&map)]);
    assert_eq!(r["items"][0]["changed_blocks"]["map"], "extents", "{r}");
    let inc = r["snapshot"].as_str().unwrap().to_string();
    assert_tables_of_a_full_read(&env, &img, &inc, "writes at parent cuts");
    restores_as(&env, &inc, "disk0.img", &img);
}
