//! Object storage misbehaves: requests are throttled, connections drop while a pack is
//! uploaded or before its response arrives, bodies stop halfway, listings are cut short.
//! These tests put a fault-injecting proxy between cairn and a real S3 server (`s3s-fs`,
//! always, whatever `CAIRN_TEST_BACKEND` says) and check that transient faults are retried
//! until every command succeeds bit for bit, that a fault that persists ends the command
//! with a message naming the object, and that a broken listing is never read as "absent".

mod common;
use common::faultproxy::{FaultProxy, Faults};
use common::*;
use std::path::Path;

/// An S3 repository reached through a fault proxy (faults off until `set`).
fn faulty_env(seed: u64) -> (Env, FaultProxy) {
    let mut env = Env::new_s3();
    let proxy = FaultProxy::start(env.s3_port.unwrap(), seed);
    env.url = format!("s3:http://127.0.0.1:{}/bkt/repo", proxy.port);
    (env, proxy)
}

fn failed(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        !o.status.success(),
        "cairn {args:?} succeeded although the store kept failing"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn restore_matches(env: &Env, snap: &str, img: &Path) {
    let out = env.path(&format!("out-{snap}"));
    env.ok(&["restore", snap, "--target", out.to_str().unwrap()]);
    let name = img.file_name().unwrap();
    assert_eq!(
        sha256(&out.join(name)),
        sha256(img),
        "{snap} restored other bytes"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn transient_faults_are_retried_until_every_command_succeeds() {
    let (env, proxy) = faulty_env(7);
    env.init(&[]);
    let img = env.path("disk0.img");
    make_random_image(&img, 96 << 20, 40 << 20, 1);
    let copy1 = env.path("gen1.img");
    std::fs::copy(&img, &copy1).unwrap();
    proxy.set(Faults {
        slow_down: 0.06,
        drop_request: 0.05,
        lose_response: 0.05,
        truncate_response: 0.05,
        latency: 0.05,
        only: None,
    });
    let first = env.backup("vm", &[&img], &[]);
    qemu_write(&img, 0x5a, 8 << 20, 6 << 20);
    let second = env.backup("vm", &[&img], &[]);
    env.ok(&["check", "--read-data"]);
    let id1 = first["snapshot"].as_str().unwrap()[..12].to_string();
    let id2 = second["snapshot"].as_str().unwrap()[..12].to_string();
    // Restore each generation and compare with what was backed up.
    restore_matches(&env, &id2, &img);
    let out = env.path("out1");
    env.ok(&["restore", &id1, "--target", out.to_str().unwrap()]);
    assert_eq!(
        sha256(&out.join("disk0.img")),
        sha256(&copy1),
        "the first snapshot restored other bytes"
    );
    // Two-phase prune under faults: record, then sweep.
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    env.ok(&["prune", "--grace", "0s"]);
    env.ok(&["check", "--read-data"]);
    restore_matches(&env, &id2, &img);
    let counts = proxy.counts();
    for fault in [
        "slow_down",
        "drop_request",
        "lose_response",
        "truncate_response",
        "latency",
    ] {
        assert!(
            counts.get(fault).copied().unwrap_or(0) > 0,
            "no {fault} was injected: {counts:?}"
        );
    }
    eprintln!("faults injected: {counts:?}");
}

#[test]
fn throttling_that_persists_fails_with_a_message_and_loses_nothing() {
    let (env, proxy) = faulty_env(11);
    env.init(&[]);
    let img = env.path("disk0.img");
    make_random_image(&img, 64 << 20, 24 << 20, 2);
    let first = env.backup("vm", &[&img], &[]);
    let id1 = first["snapshot"].as_str().unwrap()[..12].to_string();
    let gen1 = env.path("gen1.img");
    std::fs::copy(&img, &gen1).unwrap();
    qemu_write(&img, 0x33, 0, 8 << 20);

    proxy.set(Faults {
        slow_down: 1.0,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let err = failed(
        &env,
        &[
            "backup",
            "--vm",
            "vm",
            "--option",
            "s3.retry-timeout=4s",
            img.to_str().unwrap(),
        ],
    );
    let took = started.elapsed().as_secs_f64();
    assert!(took < 60.0, "gave up only after {took:.0} s");
    for want in [
        "503",
        "retried for up to 4 s",
        "s3.retry-timeout",
        "127.0.0.1",
    ] {
        assert!(err.contains(want), "the error does not say {want:?}: {err}");
    }
    assert!(proxy.count("slow_down") >= 2, "{:?}", proxy.counts());

    // The store recovers: nothing was lost, and the interrupted backup can be redone.
    proxy.set(Faults::default());
    env.ok(&["check"]);
    let out = env.path("out1");
    env.ok(&["restore", &id1, "--target", out.to_str().unwrap()]);
    assert_eq!(sha256(&out.join("disk0.img")), sha256(&gen1));
    let again = env.backup("vm", &[&img], &[]);
    restore_matches(&env, &again["snapshot"].as_str().unwrap()[..12], &img);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn a_listing_cut_short_is_an_error_never_an_empty_repository() {
    let (env, proxy) = faulty_env(13);
    env.init(&[]);
    let img = env.path("disk0.img");
    make_random_image(&img, 64 << 20, 24 << 20, 3);
    let first = env.backup("vm", &[&img], &[]);
    qemu_write(&img, 0x44, 0, 8 << 20);
    env.backup("vm", &[&img], &[]);
    let packs = env.packs().len();

    proxy.set(Faults {
        truncate_response: 1.0,
        only: Some("list-type=2"),
        ..Faults::default()
    });
    let o = ["--option", "s3.retry-timeout=3s"];
    for cmd in [
        &["snapshots", "--json"][..],
        &["check"],
        &["prune", "--exclusive"],
        &["forget", "--keep-last", "1", "--prune", "--exclusive"],
    ] {
        let args: Vec<&str> = cmd.iter().chain(o.iter()).copied().collect();
        let err = failed(&env, &args);
        assert!(
            err.contains("listing") && err.contains("s3.retry-timeout"),
            "cairn {args:?} did not say which listing failed: {err}"
        );
    }
    assert!(
        proxy.count("truncate_response") >= 4,
        "{:?}",
        proxy.counts()
    );

    proxy.set(Faults::default());
    assert_eq!(env.packs().len(), packs, "a failed listing deleted packs");
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        2,
        "a snapshot was forgotten"
    );
    env.ok(&["check", "--read-data"]);
    let id1 = &first["snapshot"].as_str().unwrap()[..12];
    let out = env.path("out1");
    env.ok(&["restore", id1, "--target", out.to_str().unwrap()]);
}

#[test]
fn wrong_credentials_are_named_not_retried() {
    let env = Env::new_s3();
    env.init(&[]);
    let started = std::time::Instant::now();
    let o = env
        .cmd(&["snapshots"])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("AWS_SECRET_ACCESS_KEY") && err.contains("config"),
        "the error does not point at the credentials: {err}"
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "a refusal was retried like a fault"
    );
}
