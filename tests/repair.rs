//! One damaged object harms only what depends on it, and the repository can be repaired:
//! damaged snapshot, index and pack files, lost index files, an unreadable config or lock.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn flip(p: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Restores `snap`'s disk `disk` to a fresh file and returns its sha256.
fn restored_sha(env: &Env, snap: &str, disk: &str) -> String {
    let out = env.path(&format!("r-{}-{disk}", snap.replace(':', "_")));
    let _ = std::fs::remove_file(&out);
    env.ok(&["restore", snap, "--disk", disk, "--target", s(&out)]);
    sha256(&out)
}

/// Two VMs with one disk each, one backup each: (disk of a, disk of b).
fn two_vms(env: &Env) -> (PathBuf, PathBuf) {
    env.init(&[]);
    let a = env.path("a.img");
    let b = env.path("b.img");
    make_random_image(&a, 16 * MIB, 8 * MIB, 1);
    make_random_image(&b, 16 * MIB, 8 * MIB, 2);
    env.backup("a", &[&a], &[]);
    env.backup("b", &[&b], &[]);
    (a, b)
}

fn snapshot_of(env: &Env, vm: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshots", "--json", "--vm", vm])).unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

/// One flipped byte in one snapshot file: every other VM keeps working, retention skips
/// it, prune refuses until it is forgotten, and `forget ID` removes it.
#[test]
fn a_damaged_snapshot_harms_only_itself() {
    let env = Env::new();
    let (_a, b) = two_vms(&env);
    let a_id = snapshot_of(&env, "a");
    let a_file = env.repo.join("snapshots").join(&a_id);
    flip(&a_file, 60);

    let o = env.run(&["snapshots"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(" b "), "{}", stdout(&o));
    assert!(stderr(&o).contains(&a_id), "{}", stderr(&o));
    env.backup("b", &[&b], &["--force-read"]);
    assert_eq!(restored_sha(&env, "b:latest", "b.img"), sha256(&b));
    let o = env.run(&["restore", &a_id[..10], "--target", s(&env.path("x"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("forget"), "{}", stderr(&o));
    env.ok(&["forget", "--keep-last", "1"]);
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cairn forget"), "{}", stderr(&o));
    assert!(
        a_file.exists(),
        "retention must not judge an unreadable snapshot"
    );
    env.ok(&["forget", &a_id[..10]]);
    assert!(!a_file.exists());
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
}

/// One flipped byte in one index file, read by a fresh host (empty cache): reads of other
/// packs work, check names it, and `repair index` rebuilds it from the packs.
#[test]
fn a_damaged_index_file_is_rebuilt_from_the_packs() {
    let env = Env::new();
    let (a, b) = two_vms(&env);
    let index = files_in(&env.repo.join("index"));
    assert_eq!(index.len(), 2, "one index file per backup");
    flip(&index[0], 50);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot be read"), "{}", stderr(&o));
    // One of the two VMs is unaffected, whichever the damaged file served.
    let ok = ["a", "b"]
        .iter()
        .filter(|vm| {
            let out = env.path(&format!("o-{vm}"));
            env.run(&[
                "restore",
                &format!("{vm}:latest"),
                "--disk",
                &format!("{vm}.img"),
                "--target",
                s(&out),
            ])
            .status
            .success()
        })
        .count();
    assert_eq!(ok, 1);
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "index", "--json"])).unwrap();
    assert_eq!(r["damaged"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["packs_recovered"].as_u64().unwrap() >= 1, "{r}");
    env.ok(&["check", "--read-data"]);
    assert_eq!(restored_sha(&env, "a:latest", "a.img"), sha256(&a));
    assert_eq!(restored_sha(&env, "b:latest", "b.img"), sha256(&b));
}

/// A lost index file makes its packs look like an interrupted backup's: check must say
/// that snapshots need them, and prune must index them again, never delete them.
#[test]
fn packs_whose_index_file_was_lost_are_not_garbage() {
    let env = Env::new();
    let (a, _b) = two_vms(&env);
    let index = files_in(&env.repo.join("index"));
    let packs_before = env.packs();
    std::fs::remove_file(&index[0]).unwrap();
    let o = env.run(&["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("repair index") && !stdout(&o).contains("harmless"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let p: serde_json::Value = serde_json::from_str(&env.ok(&["prune", "--json"])).unwrap();
    assert!(p["packs_adopted"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(env.packs(), packs_before, "prune deleted a needed pack");
    env.ok(&["check", "--read-data"]);
    assert_eq!(restored_sha(&env, "a:latest", "a.img"), sha256(&a));
}

/// One damaged byte in a pack: the next backup no longer deduplicates against the damaged
/// blob once `repair packs` dropped it, so check → repair packs → backup gives restorable
/// snapshots, the old one included (its chunk is stored again under the same id).
#[test]
fn a_damaged_pack_is_salvaged_and_the_next_backup_heals() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_random_image(&img, 16 * MIB, 8 * MIB, 5);
    env.backup("v", &[&img], &[]);
    let old = snapshot_of(&env, "v");
    let pack = env.packs()[0].clone();
    flip(&pack, 40 + 1000);
    let o = env.run(&["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needed by snapshot"), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "packs", "--json", "--dry-run"])).unwrap();
    assert_eq!(r["blobs_lost"], 1, "{r}");
    assert!(pack.exists(), "a dry run changes nothing");
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "packs", "--json"])).unwrap();
    assert_eq!(r["blobs_lost"], 1, "{r}");
    assert!(r["blobs_salvaged"].as_u64().unwrap() > 10, "{r}");
    assert!(!pack.exists());
    // The source is unchanged: the backup must notice that a chunk its parent needs is gone.
    let b = env.backup("v", &[&img], &[]);
    assert!(b["bytes_new"].as_u64().unwrap() > 0, "{b}");
    env.ok(&["check", "--read-data"]);
    assert_eq!(restored_sha(&env, "v:latest", "d.img"), sha256(&img));
    assert_eq!(restored_sha(&env, &old[..10], "d.img"), sha256(&img));
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "snapshots", "--json"])).unwrap();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 0, "{r}");
}

/// When the lost data is gone from the source too, `repair snapshots` rewrites the
/// snapshots that need it: the lost ranges are named, restore zero-fills them with a
/// warning, and check passes again.
#[test]
fn repair_snapshots_names_the_ranges_it_had_to_give_up() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_random_image(&img, 16 * MIB, 8 * MIB, 6);
    env.backup("v", &[&img], &[]);
    let pack = env.packs()[0].clone();
    flip(&pack, 40 + 1000);
    env.ok(&["repair", "packs"]);
    let o = env.run(&["check"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a snapshot still needs the lost chunk"
    );
    let dry: serde_json::Value =
        serde_json::from_str(&env.ok(&["repair", "snapshots", "--dry-run", "--json"])).unwrap();
    let lost = &dry["repaired"][0]["disks"][0];
    assert_eq!(lost["disk"], "d.img", "{dry}");
    let (off, len) = (
        lost["ranges"][0][0].as_u64().unwrap(),
        lost["ranges"][0][1].as_u64().unwrap(),
    );
    assert!(
        off == 0 && len > 0 && len <= 128 * 1024,
        "the first chunk: {dry}"
    );
    env.ok(&["repair", "snapshots"]);
    env.ok(&["check", "--read-data"]);
    let out = env.path("out.img");
    let o = env.run(&[
        "restore",
        "v:latest",
        "--disk",
        "d.img",
        "--target",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("lost to repository damage"),
        "{}",
        stderr(&o)
    );
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(&img).unwrap();
    assert!(got[..len as usize].iter().all(|&b| b == 0));
    assert_eq!(got[len as usize..], want[len as usize..]);
    let snaps = env.ok(&["snapshots", "--json"]);
    assert!(snaps.contains("repaired"), "{snaps}");
}

/// A damaged config cannot be checked (check needs it too): the message says what helps.
#[test]
fn a_damaged_config_says_what_to_do() {
    let env = Env::new();
    env.init(&[]);
    flip(&env.repo.join("config"), 30);
    let o = env.run(&["check"]);
    assert_ne!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert!(e.contains("config") && e.contains("copy"), "{e}");
    assert!(!e.contains("check --read-data"), "{e}");
}

/// A lock file that cannot be parsed counts as held: prune does not run beside it.
#[test]
fn an_unreadable_lock_counts_as_held() {
    let env = Env::new();
    env.init(&[]);
    std::fs::create_dir_all(env.repo.join("locks")).unwrap();
    std::fs::write(env.repo.join("locks/0123abcd"), b"\x00garbage{").unwrap();
    let o = env.run(&["prune"]);
    assert_eq!(
        o.status.code(),
        Some(11),
        "prune ran beside a lock it cannot read"
    );
    assert!(stderr(&o).contains("cannot be read"), "{}", stderr(&o));
    assert!(env.ok(&["locks"]).contains("unreadable"));
    env.ok(&["unlock", "--remove-all"]);
    env.ok(&["prune"]);
}
