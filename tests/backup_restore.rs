//! The core scenario on a real GPT + ext4 image: back up, change with qemu-io, back up
//! again, restore both snapshots and compare them with the images bit for bit.

mod common;
use common::*;

#[test]
fn ext4_image_two_generations_restore_bit_for_bit() {
    let env = Env::new();
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 96, 1);
    let img = env.path("disk0.img");
    make_ext4_image(&img, 1536 << 20, &tree);
    let gen1 = sha256(&img);

    let first = env.backup("web01", &[&img], &["--tag", "nightly", "--host", "proxy1"]);
    assert!(first["bytes_new"].as_u64().unwrap() > 60 << 20, "{first}");
    assert!(
        first["holes_skipped"].as_u64().unwrap() > 1 << 30,
        "the sparse image's unallocated space was stored: {first}"
    );

    // A guest writes: 3 MiB in one place, a few scattered 4 KiB blocks.
    qemu_write(&img, 0xab, 100 << 20, 3 << 20);
    for (i, off) in [7u64 << 20, 250 << 20, 400 << 20, 901 << 20, 1300 << 20]
        .iter()
        .enumerate()
    {
        qemu_write(&img, 0x10 + i as u8, *off + 4096 * i as u64, 4096);
    }
    let gen2 = sha256(&img);
    assert_ne!(gen1, gen2);
    let second = env.backup("web01", &[&img], &[]);
    let stored = second["bytes_stored"].as_u64().unwrap();
    assert!(
        stored < 4 << 20,
        "the second backup stored {stored} bytes: {second}"
    );
    assert!(
        second["bytes_read"].as_u64().unwrap() > 60 << 20,
        "the changed image was read"
    );
    assert_eq!(second["parent"], first["snapshot"]);

    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[0]["tags"][0], "nightly");
    assert_eq!(snaps[0]["host"], "proxy1");
    assert_eq!(snaps[0]["logical_size"], 1536u64 << 20);

    for (snap, want) in [(&first, &gen1), (&second, &gen2)] {
        let id = snap["snapshot"].as_str().unwrap();
        let out = env.path(&format!("out-{}", &id[..8]));
        env.ok(&["restore", &id[..10], "--target", out.to_str().unwrap()]);
        let restored = out.join("disk0.img");
        assert_eq!(
            &sha256(&restored),
            want,
            "snapshot {id} restored wrong bytes"
        );
        assert!(
            allocated(&restored) < 512 << 20,
            "holes were written as zeros: {} bytes allocated",
            allocated(&restored)
        );
    }
    // The first generation's filesystem is sound, as the guest would see it (the second
    // one had raw patterns written over it, which no filesystem survives).
    let id1 = first["snapshot"].as_str().unwrap();
    let restored = env.path(&format!("out-{}", &id1[..8])).join("disk0.img");
    sh(
        "e2fsck",
        &["-fn", &format!("{}?offset=1048576", restored.display())],
    );
    env.ok(&["check", "--read-data"]);
}

#[test]
fn unchanged_disk_is_not_read_and_force_read_rereads() {
    let env = Env::new();
    env.init(&["--encryption", "none"]);
    let img = env.path("d.img");
    make_random_image(&img, 256 << 20, 40 << 20, 5);
    env.backup("vm", &[&img], &[]);
    let again = env.backup("vm", &[&img], &[]);
    assert_eq!(again["bytes_read"], 0);
    assert_eq!(again["disks_unchanged"], 1);
    let forced = env.backup("vm", &[&img], &["--force-read"]);
    assert_eq!(forced["bytes_read"], 40u64 << 20);
    assert_eq!(forced["bytes_new"], 0);
    let out = env.path("out");
    env.ok(&["restore", "vm:latest", "--target", out.to_str().unwrap()]);
    assert_eq!(sha256(&out.join("d.img")), sha256(&img));
}

#[test]
fn two_vms_sharing_an_os_tree_dedup() {
    let env = Env::new();
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 64, 2);
    let a = env.path("a.img");
    make_ext4_image(&a, 512 << 20, &tree);
    // The second VM: same OS files plus its own data, in a filesystem made separately.
    make_tree(&tree.join("srv"), 4, 3);
    let b = env.path("b.img");
    make_ext4_image(&b, 512 << 20, &tree);
    let ra = env.backup("vm-a", &[&a], &[]);
    let rb = env.backup("vm-b", &[&b], &[]);
    let (na, nb) = (
        ra["bytes_new"].as_u64().unwrap(),
        rb["bytes_new"].as_u64().unwrap(),
    );
    assert!(
        nb < na / 4,
        "vm-b added {nb} new bytes, vm-a {na}: the shared tree did not dedup"
    );
    let out = env.path("out");
    env.ok(&["restore", "vm-b:latest", "--target", out.to_str().unwrap()]);
    assert_eq!(sha256(&out.join("b.img")), sha256(&b));
}

#[test]
fn fixed_chunker_two_disks_and_single_disk_restore() {
    let env = Env::new();
    env.init(&["--chunker", "fixed", "--chunk-size", "64K"]);
    let d0 = env.path("disk0.img");
    let d1 = env.path("disk1.img");
    make_random_image(&d0, 300 << 20, 20 << 20, 1);
    make_random_image(&d1, 100 << 20, (10 << 20) + 1234, 2);
    qemu_write(&d1, 0, 5 << 20, 1 << 20); // zeros inside data: a hole, not a chunk
    let r = env.backup("db01", &[&d0, &d1], &[]);
    assert_eq!(r["disks"], 2);
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap(); // an existing folder receives the disk by name
    let o = out.to_str().unwrap();
    env.ok(&[
        "restore",
        "db01:latest",
        "--target",
        o,
        "--disk",
        "disk1.img",
    ]);
    assert!(!out.join("disk0.img").exists());
    assert_eq!(sha256(&out.join("disk1.img")), sha256(&d1));
    let refused = env.run(&["restore", "db01:latest", "--target", o]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--existing overwrite"));
    env.ok(&[
        "restore",
        "db01:latest",
        "--target",
        o,
        "--existing",
        "overwrite",
    ]);
    assert_eq!(sha256(&out.join("disk0.img")), sha256(&d0));
}
