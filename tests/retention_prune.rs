//! Retention and prune on real repositories: the kept set is exactly the policy's, space
//! comes back, every kept snapshot restores bit for bit, a prune killed at any step leaves a
//! sound repository, and prune never pulls chunks from under a running backup.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Overwrites `len` bytes at `off` with fresh random data, as a guest writing new data.
fn scribble(img: &Path, off: u64, len: usize, seed: u64) {
    let mut buf = vec![0u8; len];
    noise(&mut buf, seed);
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &buf, off).unwrap();
}

/// Days after Monday 2026-09-07 of each VM's backups (6 weeks; weeks start on day 0, 7, …).
const HISTORY: [(&str, [i64; 6]); 2] = [
    ("vm-a", [1, 9, 16, 37, 38, 40]),
    ("vm-b", [2, 5, 12, 20, 27, 41]),
];

/// Backs up both VMs' changing images on the HISTORY schedule; returns snapshot id → sha256
/// of the image it captured, and the snapshot ids per VM in time order.
fn six_weeks(
    env: &Env,
) -> (
    BTreeMap<String, String>,
    BTreeMap<&'static str, Vec<String>>,
) {
    env.init(&[]);
    let mut sums = BTreeMap::new();
    let mut ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (v, (vm, days)) in HISTORY.iter().enumerate() {
        let img = env.path(&format!("{vm}.img"));
        make_random_image(&img, 96 << 20, 48 << 20, 100 * (v as u64 + 1));
        for (g, day) in days.iter().enumerate() {
            scribble(
                &img,
                (g as u64 * 7 % 40) << 20,
                6 << 20,
                1000 * v as u64 + g as u64,
            );
            let t = chrono::DateTime::parse_from_rfc3339("2026-09-07T02:00:00+02:00").unwrap()
                + chrono::Duration::days(*day);
            let r = env.backup(vm, &[&img], &["--time", &t.to_rfc3339()]);
            let id = r["snapshot"].as_str().unwrap().to_string();
            sums.insert(id.clone(), sha256(&img));
            ids.entry(vm).or_default().push(id);
        }
    }
    (sums, ids)
}

fn data_bytes(env: &Env) -> u64 {
    env.packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Restores every snapshot still in the repository and compares it with its image.
fn restore_all(env: &Env, sums: &BTreeMap<String, String>) {
    for id in snapshot_ids(env) {
        let out = env.path(&format!("r-{}", &id[..8]));
        let _ = std::fs::remove_dir_all(&out);
        let o = env.ok(&["restore", &id, "--target", out.to_str().unwrap(), "--json"]);
        let r: serde_json::Value = serde_json::from_str(&o).unwrap();
        let file = r["disks"][0]["path"].as_str().unwrap();
        assert_eq!(
            &sha256(Path::new(file)),
            &sums[&id],
            "snapshot {id} restored wrong bytes"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn forget_daily_weekly_then_prune_keeps_exactly_the_policy() {
    let env = Env::new();
    let (sums, ids) = six_weeks(&env);
    let before = data_bytes(&env);
    // Expected by hand from HISTORY: keep-daily 3 keeps each VM's three newest days;
    // keep-weekly 2 adds the newest of the second-newest ISO week that has a snapshot
    // (vm-a: day 16, week 3; vm-b: day 27, week 4, already kept as a daily).
    let expect: Vec<String> = [&ids["vm-a"][2..], &ids["vm-b"][3..]].concat();
    let dry: serde_json::Value = serde_json::from_str(&env.ok(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "2",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dry["forget"]["removed"], 5);
    assert_eq!(snapshot_ids(&env).len(), 12, "a dry run removed something");
    let a = &dry["forget"]["groups"][0];
    assert_eq!(a["group"], "vm-a");
    assert_eq!(a["keep"][0]["reasons"], serde_json::json!(["weekly"]));
    assert_eq!(
        a["keep"][3]["reasons"],
        serde_json::json!(["daily", "weekly"])
    );

    let out: serde_json::Value = serde_json::from_str(&env.ok(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "2",
        "--prune",
        "--json",
    ]))
    .unwrap();
    let mut kept = snapshot_ids(&env);
    kept.sort();
    let mut want: Vec<String> = expect;
    want.sort();
    assert_eq!(kept, want);
    // Two-phase: the unused packs are recorded, not deleted; a prune after the grace
    // period deletes them.
    assert_eq!(out["prune"]["mode"], "two-phase");
    assert!(out["prune"]["packs_pending"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["prune"]["packs_deleted"], 0, "{out}");
    let wait: serde_json::Value = serde_json::from_str(&env.ok(&["prune", "--json"])).unwrap();
    assert_eq!(wait["packs_deleted"], 0, "{wait}");
    let waiting = wait["records_waiting"][0].as_str().unwrap_or_default();
    assert!(waiting.contains("due at 3600 s"), "{wait}");
    let out: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--grace", "0s", "--json"])).unwrap();
    assert_eq!(out["records_swept"], 1, "{out}");
    let after = data_bytes(&env);
    assert!(
        after < before * 85 / 100,
        "prune freed too little: {before} -> {after}: {out}"
    );
    assert!(out["bytes_freed"].as_i64().unwrap() > 0);
    assert!(
        env.list("pending").is_empty(),
        "the swept record is still there"
    );
    let check = env.ok(&["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    restore_all(&env, &sums);
    // Applying the policy again removes nothing more.
    let again: serde_json::Value = serde_json::from_str(&env.ok(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(again["forget"]["removed"], 0);
}

#[test]
fn protected_snapshots_and_stored_policies() {
    let env = Env::new();
    let (_, ids) = six_weeks(&env);
    let oldest_a = &ids["vm-a"][0];
    env.ok(&["protect", &oldest_a[..8]]);
    env.ok(&["policy", "set", "--vm", "vm-a", "--keep-last", "1"]);
    env.ok(&["policy", "set", "--vm", "vm-*", "--keep-last", "2"]);
    let show = env.ok(&["policy", "show"]);
    assert!(show.contains("vm-a") && show.contains("vm-*"), "{show}");
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["forget", "--policy", "--prune", "--json"])).unwrap();
    let left = snapshot_ids(&env);
    // vm-a: keep-last 1 plus the protected oldest; vm-b: the first matching pattern, last 2.
    assert_eq!(left.len(), 4, "{r}");
    assert!(left.contains(oldest_a));
    assert!(
        left.contains(&ids["vm-a"][5])
            && left.contains(&ids["vm-b"][4])
            && left.contains(&ids["vm-b"][5])
    );
    let list = env.ok(&["snapshots"]);
    assert!(list.contains(&format!("{}*", &oldest_a[..8])), "{list}");
    env.ok(&["unprotect", &oldest_a[..8]]);
    env.ok(&["forget", "--policy"]);
    assert_eq!(snapshot_ids(&env).len(), 3);
    let o = env.run(&["forget"]);
    assert_eq!(o.status.code(), Some(2), "forget without rules must refuse");
    env.ok(&["check", "--read-data"]);
}

/// Kills prune with SIGKILL at `point`, then checks the repository, restores everything,
/// and lets the next prunes (the dead one's lock is stale) finish the job. `mode`:
/// "--exclusive" deletes at once; "" records; "sweep" records first, then a run with no
/// grace period sweeps and is the one killed.
fn prune_killed_at(mode: &str, point: &str) {
    let env = Env::new();
    let (sums, _) = six_weeks(&env);
    env.ok(&["forget", "--keep-daily", "3", "--keep-weekly", "2"]);
    let before = data_bytes(&env);
    let mut args = vec!["prune"];
    match mode {
        "--exclusive" => args.push(mode),
        "sweep" => {
            env.ok(&["prune"]);
            args.extend(["--grace", "0s"]);
        }
        _ => {}
    }
    let o = env
        .cmd(&args)
        .env("CAIRN_CRASH_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        o.status.signal(),
        Some(9),
        "prune {mode} did not reach point {point}: {o:?}"
    );
    let check = env.ok(&["check", "--read-data"]);
    assert!(
        check.contains("no problems found"),
        "after a crash at {point} ({mode}): {check}"
    );
    restore_all(&env, &sums);
    // One run completes or records, the next sweeps.
    env.ok(&["prune", "--grace", "0s"]);
    env.ok(&["prune", "--grace", "0s"]);
    assert!(
        env.list("pending").is_empty(),
        "{point} ({mode}): a record is left"
    );
    let after = data_bytes(&env);
    assert!(
        after < before * 85 / 100,
        "{point} ({mode}): {before} -> {after}"
    );
    env.ok(&["check", "--read-data"]);
    restore_all(&env, &sums);
}

#[test]
fn exclusive_prune_killed_while_repacking() {
    prune_killed_at("--exclusive", "repack");
}

#[test]
fn exclusive_prune_killed_after_writing_the_index() {
    prune_killed_at("--exclusive", "index");
}

#[test]
fn exclusive_prune_killed_while_deleting() {
    prune_killed_at("--exclusive", "delete");
}

#[test]
fn prune_killed_while_repacking() {
    prune_killed_at("", "repack");
}

#[test]
fn prune_killed_between_the_two_writes_of_its_record() {
    prune_killed_at("", "record");
}

#[test]
fn sweep_killed_after_writing_the_index() {
    prune_killed_at("sweep", "index");
}

#[test]
fn sweep_killed_while_deleting() {
    prune_killed_at("sweep", "delete");
}

/// Forgets all but each VM's newest snapshot, and returns an image (with its sha256) that
/// starts with the oldest vm-a image: most of what later backups overwrote is in it, and
/// the forget released that.
fn image_with_released_data(
    env: &Env,
    ids: &BTreeMap<&'static str, Vec<String>>,
) -> (std::path::PathBuf, String) {
    let old = env.path("old");
    env.ok(&[
        "restore",
        &ids["vm-a"][0],
        "--target",
        old.to_str().unwrap(),
    ]);
    let shared = std::fs::read(old.join("vm-a.img")).unwrap();
    env.ok(&["forget", "--keep-last", "1"]);
    let big = env.path("big.img");
    make_random_image(&big, 1 << 30, 768 << 20, 77);
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&big).unwrap(),
        &shared,
        0,
    )
    .unwrap();
    let want = sha256(&big);
    (big, want)
}

/// Starts `backup --vm big` of `img` and freezes it (real SIGSTOP) once it has stored a
/// pack, so that what follows runs while it holds its lock.
fn frozen_backup(env: &Env, img: &Path) -> std::process::Child {
    let packs_before = env.packs().len();
    let backup = env
        .cmd(&["backup", "--vm", "big", "--json", img.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.packs().len() <= packs_before {
        assert!(Instant::now() < deadline, "the backup wrote no pack");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&backup, "STOP");
    backup
}

/// Stops a process that is retrying for a lock at a moment when it holds none: each attempt
/// writes a lock and deletes it again when it conflicts, and a process frozen in between would
/// keep everyone else out.
fn stop_between_attempts(env: &Env, waiting: &std::process::Child) {
    let pid = waiting.id();
    for _ in 0..100 {
        signal(waiting, "STOP");
        let locks: serde_json::Value = serde_json::from_str(&env.ok(&["locks", "--json"])).unwrap();
        let holds = locks
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["lock"]["pid"].as_u64() == Some(pid as u64));
        if !holds {
            return;
        }
        signal(waiting, "CONT");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the waiting prune always held a lock");
}

/// Stops (`STOP`) or resumes (`CONT`) a process.
fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

#[test]
fn prune_during_a_running_backup_never_removes_its_chunks() {
    let env = Env::new();
    let (mut sums, ids) = six_weeks(&env);
    let (big, want) = image_with_released_data(&env, &ids);

    // A backup that dedups against the released data, frozen mid-way.
    let backup = frozen_backup(&env, &big);
    // An exclusive prune is refused, naming the backup.
    let o = env.run(&["prune", "--exclusive"]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(11), "{e}");
    assert!(e.contains("backup --vm big") && e.contains("pid"), "{e}");
    // The default prune runs beside it and records the released packs.
    let first: serde_json::Value = serde_json::from_str(&env.ok(&["prune", "--json"])).unwrap();
    assert!(first["packs_pending"].as_u64().unwrap() > 0, "{first}");
    // Even with no grace period nothing goes while the backup that may not know of the
    // record runs.
    let early: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--grace", "0s", "--json"])).unwrap();
    assert_eq!(early["packs_deleted"], 0, "{early}");
    let why = early["records_waiting"].to_string();
    assert!(why.contains("waiting for locks/"), "{early}");
    // A scheduled exclusive prune waits for the lock instead of failing.
    let mut waiting = env
        .cmd(&["prune", "--exclusive", "--retry-lock", "5m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the exclusive prune did not wait"
    );
    stop_between_attempts(&env, &waiting);
    signal(&backup, "CONT");
    let o = backup.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    sums.insert(r["snapshot"].as_str().unwrap().to_string(), want.clone());
    // Now the record is due: marking again finds that the backup used recorded packs,
    // and those stay.
    let sweep: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--grace", "0s", "--json"])).unwrap();
    assert_eq!(sweep["records_swept"], 1, "{sweep}");
    assert!(sweep["packs_resurrected"].as_u64().unwrap() > 0, "{sweep}");
    signal(&waiting, "CONT");
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.ok(&["check", "--read-data"]);
    restore_all(&env, &sums);
}

/// A backup that starts after a prune recorded packs stores what they hold again instead of
/// referencing it, so a sweep while it runs (it is not among the record's writers) takes
/// nothing it needs.
#[test]
fn a_backup_started_after_a_record_never_references_recorded_packs() {
    let env = Env::new();
    let (mut sums, ids) = six_weeks(&env);
    let (big, want) = image_with_released_data(&env, &ids);
    let first: serde_json::Value = serde_json::from_str(&env.ok(&["prune", "--json"])).unwrap();
    assert!(first["packs_pending"].as_u64().unwrap() > 0, "{first}");
    let backup = frozen_backup(&env, &big);
    let sweep: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--grace", "0s", "--json"])).unwrap();
    assert_eq!(sweep["records_swept"], 1, "{sweep}");
    assert_eq!(sweep["packs_resurrected"], 0, "{sweep}");
    assert!(sweep["packs_deleted"].as_u64().unwrap() > 0, "{sweep}");
    signal(&backup, "CONT");
    let o = backup.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    sums.insert(r["snapshot"].as_str().unwrap().to_string(), want);
    let check = env.ok(&["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
    restore_all(&env, &sums);
}

#[test]
fn stale_and_live_locks_of_other_processes() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_random_image(&img, 16 << 20, 8 << 20, 1);
    let now = chrono::Utc::now().timestamp();
    let lock = |host: &str, pid: u32, refreshed: i64| {
        serde_json::json!({"kind": "exclusive", "host": host, "pid": pid, "command": "prune",
                           "created": refreshed, "refreshed": refreshed})
        .to_string()
    };
    std::fs::create_dir_all(env.repo.join("locks")).unwrap();
    // A live prune on another proxy: backups are refused with its host, pid and age.
    std::fs::write(env.repo.join("locks/aaaa"), lock("proxy-b", 4242, now)).unwrap();
    let o = env.run(&["backup", "--vm", "x", img.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(11));
    assert!(
        e.contains("host proxy-b") && e.contains("pid 4242") && e.contains("cairn unlock"),
        "{e}"
    );
    // Forty minutes without a refresh: stale, reported, ignored, removed by unlock.
    std::fs::write(
        env.repo.join("locks/aaaa"),
        lock("proxy-b", 4242, now - 40 * 60),
    )
    .unwrap();
    // A lock of a process on this host that has exited: stale too.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(env.repo.join("locks/bbbb"), lock(host.trim(), dead, now)).unwrap();
    let listing = env.ok(&["locks"]);
    assert_eq!(listing.matches("STALE").count(), 2, "{listing}");
    env.backup("x", &[&img], &[]);
    assert!(env.ok(&["unlock"]).contains("removed 2 locks"));
    assert!(env.ok(&["locks"]).contains("0 locks"));
}

/// A damaged blob that prune must copy out of a mostly unused pack stops the prune: the
/// message names the blob and its pack, and no pack is deleted. (Repack checks each blob it
/// keeps, not the whole pack, so this is the check that stands between damage and a copy.)
#[test]
fn a_damaged_blob_to_repack_stops_prune_and_deletes_nothing() {
    use std::os::unix::fs::FileExt;
    let env = Env::new();
    env.init(&[]);
    let img = env.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    scribble(&img, 0, 48 << 20, 1);
    env.backup("vm", &[&img], &["--time", "2026-09-01T01:00:00Z"]);
    let first: Vec<_> = env.packs();
    // Every other MiB rewritten: half of the first night's blobs are unused once it is
    // forgotten, so each of its packs is repacked.
    for (i, mib) in (0..48u64).step_by(2).enumerate() {
        scribble(&img, mib << 20, 1 << 20, 100 + i as u64);
    }
    env.backup("vm", &[&img], &["--time", "2026-09-02T01:00:00Z"]);
    // One byte in every 4 KiB of the first night's packs: every blob they hold is damaged.
    for p in &first {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let len = f.metadata().unwrap().len();
        for at in (4096..len.saturating_sub(4096)).step_by(4096) {
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
        }
    }
    let packs_before = env.packs();
    let o = env.run(&["forget", "--keep-last", "1", "--prune", "--exclusive"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "prune copied damaged blobs: {err}");
    assert!(
        err.contains("blob ") && err.contains("in pack data/"),
        "{err}"
    );
    let after = env.packs();
    for p in &packs_before {
        assert!(after.contains(p), "{} was deleted: {err}", p.display());
    }
}
