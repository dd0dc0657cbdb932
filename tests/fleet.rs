//! One repository shared by a fleet: four backup processes ("proxies", each with its own
//! index cache) back up different VMs built from one OS image at the same time, while a
//! `forget --prune` loop runs beside them, for several rounds; a backup is killed with
//! SIGKILL mid-upload. Afterwards `check --read-data` passes, every snapshot restores bit
//! for bit, and once prune has run the shared OS data is stored once. With
//! `CAIRN_TEST_BACKEND=s3` the same runs against a real S3 server.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

const MIB: u64 = 1 << 20;
/// The OS image every VM starts from.
const OS: u64 = 48 * MIB;
/// What each VM writes of its own per round, after the OS data.
const PER_ROUND: u64 = 8 * MIB;
const ROUNDS: u64 = 3;
const VMS: usize = 4;

fn write_at(img: &Path, off: u64, len: u64, seed: u64) {
    let mut buf = vec![0u8; len as usize];
    noise(&mut buf, seed);
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &buf, off).unwrap();
}

/// A backup on proxy `p`: its own cache, as a separate host would have. `crash`: killed
/// with SIGKILL after its first pack is stored, other uploads in flight.
fn spawn_backup(env: &Env, p: usize, img: &Path, crash: bool) -> Child {
    let mut c = env.cmd(&[
        "backup",
        "--json",
        "--vm",
        &format!("vm{p}"),
        img.to_str().unwrap(),
    ]);
    c.env("CAIRN_CACHE_DIR", env.path(&format!("cache-proxy{p}")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if crash {
        c.env("CAIRN_CRASH_AT", "pack-uploaded");
    }
    c.spawn().unwrap()
}

fn pack_bytes(env: &Env) -> u64 {
    env.packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn four_proxies_and_a_prune_loop_lose_nothing_and_store_the_os_once() {
    let env = Env::new();
    env.init(&[]);
    let base = env.path("os.img");
    make_random_image(&base, 128 * MIB, OS, 4242);
    let imgs: Vec<PathBuf> = (0..VMS)
        .map(|p| {
            let img = env.path(&format!("vm{p}.img"));
            std::fs::copy(&base, &img).unwrap();
            img
        })
        .collect();
    // snapshot id → sha256 of what it captured.
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let mut prunes = 0;
    for round in 0..ROUNDS {
        let mut want = Vec::new();
        for (p, img) in imgs.iter().enumerate() {
            write_at(
                img,
                OS + round * PER_ROUND,
                PER_ROUND,
                100 * round + p as u64,
            );
            want.push(sha256(img));
        }
        let stop = AtomicBool::new(false);
        let outcomes = std::thread::scope(|s| {
            // The retention loop, as a nightly schedule that overlaps the backups.
            let looper = s.spawn(|| {
                let mut runs = 0;
                while !stop.load(Ordering::Relaxed) {
                    let o = env.run(&["forget", "--keep-last", "1", "--prune", "--grace", "0s"]);
                    assert!(
                        o.status.success(),
                        "forget --prune beside backups failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    runs += 1;
                }
                runs
            });
            // Round 2: proxy 3 dies mid-upload.
            let killed = (round == 1).then_some(3);
            let kids: Vec<Child> = imgs
                .iter()
                .enumerate()
                .map(|(p, img)| spawn_backup(&env, p, img, killed == Some(p)))
                .collect();
            let outs: Vec<_> = kids
                .into_iter()
                .map(|k| k.wait_with_output().unwrap())
                .collect();
            stop.store(true, Ordering::Relaxed);
            (outs, killed, looper.join().unwrap())
        });
        let (outs, killed, runs) = outcomes;
        assert!(runs > 0, "round {round}: the prune loop never ran");
        prunes += runs;
        for (p, o) in outs.iter().enumerate() {
            if Some(p) == killed {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(o.status.signal(), Some(9), "vm{p} was to be killed: {o:?}");
                continue;
            }
            assert!(
                o.status.success(),
                "round {round}: backup of vm{p} failed beside prune: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            sums.insert(r["snapshot"].as_str().unwrap().to_string(), want[p].clone());
        }
        let check = env.ok(&["check", "--read-data"]);
        assert!(
            check.contains("no problems found"),
            "round {round}: {check}"
        );
    }
    eprintln!("{prunes} forget --prune runs overlapped the backups");

    // The loop's last forget may have run before the last backups finished.
    env.ok(&["forget", "--keep-last", "1"]);
    // Every snapshot kept restores bit for bit.
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), VMS, "keep-last 1 per VM: {list}");
    for id in &ids {
        let out = env.path(&format!("r-{}", &id[..8]));
        let r: serde_json::Value = serde_json::from_str(&env.ok(&[
            "restore",
            id,
            "--target",
            out.to_str().unwrap(),
            "--json",
        ]))
        .unwrap();
        let file = r["disks"][0]["path"].as_str().unwrap();
        assert_eq!(sha256(Path::new(file)), sums[id], "snapshot {id}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    // Once prune has collected (two runs: record, then sweep), the OS data is stored once:
    // what is left is the OS plus each VM's own data, not four copies of the OS.
    env.ok(&["prune", "--grace", "0s"]);
    env.ok(&["prune", "--grace", "0s"]);
    let live = OS + VMS as u64 * ROUNDS * PER_ROUND;
    let stored = pack_bytes(&env);
    eprintln!("stored {stored} bytes for {live} bytes of distinct data");
    assert!(
        stored < live + live / 10,
        "stored {stored} bytes for {live} bytes of distinct data (four copies of the OS would be {})",
        live + (VMS as u64 - 1) * OS
    );
    let check = env.ok(&["check", "--read-data"]);
    assert!(check.contains("no problems found"), "{check}");
}
