//! Bad input gets a clear error naming the object, and nothing is lost: wrong password,
//! not a repository, damaged packs, an unknown image format, an image that shrinks while
//! read, a full target disk, and `kill -9` in the middle of a backup.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A repository with one snapshot of a 64 MiB random-data image.
fn one_snapshot(env: &Env) -> (std::path::PathBuf, String) {
    env.init(&[]);
    let img = env.path("disk.img");
    make_random_image(&img, 128 << 20, 64 << 20, 9);
    let r = env.backup("vm1", &[&img], &[]);
    (img, r["snapshot"].as_str().unwrap().to_string())
}

#[test]
fn wrong_password_and_not_a_repository() {
    let mut env = Env::new();
    env.init(&[]);
    env.password = "wrong".into();
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(12));
    assert!(
        stderr(&o).contains("wrong password for repository"),
        "{}",
        stderr(&o)
    );

    let o = env
        .cmd(&["snapshots"])
        .env("CAIRN_REPOSITORY", env.path("nothing"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10));
    assert!(
        stderr(&o).contains("is not a cairn repository"),
        "{}",
        stderr(&o)
    );

    let o = env
        .cmd(&["snapshots"])
        .env_remove("CAIRN_PASSWORD")
        .output()
        .unwrap();
    assert!(stderr(&o).contains("CAIRN_PASSWORD"), "{}", stderr(&o));
    let o = env.run(&["init"]);
    assert!(
        stderr(&o).contains("already holds a cairn repository"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn flipped_byte_in_a_pack_is_named_and_never_restored() {
    let env = Env::new();
    let (_, snap) = one_snapshot(&env);
    let pack = env
        .packs()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let pack_hex = pack.file_name().unwrap().to_str().unwrap().to_string();

    let o = env.run(&["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&pack_hex), "check does not name the pack: {e}");
    assert!(
        e.contains(&snap[..8]),
        "check does not name the snapshot: {e}"
    );

    let out = env.path("out");
    let o = env.run(&["restore", &snap[..8], "--target", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&pack_hex[..16]) && e.contains(&snap[..8]), "{e}");
    assert!(
        !out.join("disk.img").exists(),
        "a restore with wrong bytes was left in place"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "a partial file was left behind"
    );
}

#[test]
fn truncated_pack_fails_check_and_restore() {
    let env = Env::new();
    let (_, snap) = one_snapshot(&env);
    let pack = env.packs()[0].clone();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    let out = env.path("out");
    let o = env.run(&["restore", &snap, "--target", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert!(!out.join("disk.img").exists());

    std::fs::remove_file(&pack).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is missing"), "{}", stderr(&o));
}

#[test]
fn unknown_image_format_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let q = env.path("disk.qed");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qed", q.to_str().unwrap(), "64M"],
    );
    let o = env.run(&["backup", "--vm", "x", q.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("disk.qed is a QED image") && e.contains("qemu-img convert"),
        "{e}"
    );
    let o = env.run(&[
        "backup",
        "--vm",
        "x",
        env.path("missing.img").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("missing.img"), "{}", stderr(&o));
    assert!(std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count()) == 0);
}

/// Starts a backup and waits until it has written at least one pack.
fn backup_in_flight(env: &Env, img: &std::path::Path) -> std::process::Child {
    let before = env.packs().len();
    let child = env
        .cmd(&["backup", "--vm", "big", img.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.packs().len() < before + 1 {
        assert!(
            Instant::now() < deadline,
            "the backup wrote no pack in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn image_that_shrinks_while_read_commits_nothing() {
    let env = Env::new();
    let (_, _) = one_snapshot(&env);
    let big = env.path("big.img");
    make_random_image(&big, 2 << 30, 1536 << 20, 4);
    let child = backup_in_flight(&env, &big);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("big.img") && e.contains("shrank"), "{e}");
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "a snapshot of a shrunken image was committed"
    );
    env.ok(&["check", "--read-data"]);
}

#[test]
fn kill_9_during_backup_leaves_a_sound_repository() {
    let env = Env::new();
    let (img, snap) = one_snapshot(&env);
    let big = env.path("big.img");
    make_random_image(&big, 2 << 30, 1536 << 20, 8);
    let mut child = backup_in_flight(&env, &big);
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // A lock of the dead process is left behind; it is stale, so work goes on.
    let check = env.ok(&["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    let out = env.path("out");
    env.ok(&["restore", &snap, "--target", out.to_str().unwrap()]);
    assert_eq!(sha256(&out.join("disk.img")), sha256(&img));
    // The next backup completes and restores exactly.
    let small = env.path("small.img");
    make_random_image(&small, 64 << 20, 32 << 20, 10);
    env.backup("big", &[&small], &[]);
    env.ok(&["restore", "big:latest", "--target", out.to_str().unwrap()]);
    assert_eq!(sha256(&out.join("small.img")), sha256(&small));
    env.ok(&["check"]);
}

#[test]
fn full_target_disk_fails_cleanly() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let env = Env::new();
    let (_, snap) = one_snapshot(&env);
    let mnt = env.path("small-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=16m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    );
    let o = env.run(&["restore", &snap, "--target", mnt.to_str().unwrap()]);
    let listing: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    sh("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("No space left on device") && e.contains("disk.img"),
        "{e}"
    );
    assert!(
        listing.is_empty(),
        "left behind on the full disk: {listing:?}"
    );
}

#[test]
fn full_repository_disk_fails_cleanly() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    if on_s3() {
        eprintln!("local repositories only: a full folder; on S3 a full store is a server error");
        return;
    }
    let mut env = Env::new();
    let mnt = env.path("small-repo-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=48m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    );
    env.repo = mnt.join("repo");
    env.url = env.repo.display().to_string();
    env.init(&[]);
    let img = env.path("disk.img");
    make_random_image(&img, 128 << 20, 96 << 20, 3);
    let o = env.run(&["backup", "--vm", "x", img.to_str().unwrap()]);
    let snaps = std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count());
    // Temporary files anywhere in data/ (a pack being written is data/.tmp-…).
    let data = env.repo.join("data");
    let mut folders = vec![data.clone()];
    folders.extend(env.list("data").into_iter().filter(|p| p.is_dir()));
    let temps = folders
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp")
        })
        .count();
    let check = env.run(&["check"]);
    sh("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snaps, 0);
    assert_eq!(temps, 0, "temporary files were left in the repository");
    assert!(check.status.success(), "{}", stderr(&check));
}
