//! Memory stays bounded whatever the image size: a backup and a restore of a 16 GiB image
//! holding 4 GiB of random (incompressible, undeduplicable) data each peak under 512 MiB.
//! Peak RSS is the kernel's count for the child process (wait4's ru_maxrss).
//! The data is 4 GiB, not more, so that the test's disk use (image and repository, then
//! repository and restored image) stays near 8 GiB on a small CI disk.

mod common;
use common::*;
use std::io::{Seek, SeekFrom, Write};

const LIMIT_KIB: u64 = 512 * 1024;

#[test]
fn backup_and_restore_of_16_gib_image_stay_under_512_mib() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("big.img");
    let free = free_bytes(&env.path(""));
    assert!(
        free > 9 << 30,
        "this test needs 9 GiB free under {}, and {} MiB are free",
        env.path("").display(),
        free >> 20
    );
    {
        // 4 × 1 GiB of random data, each followed by a 3 GiB hole.
        let mut f = std::fs::File::create(&img).unwrap();
        let mut buf = vec![0u8; 16 << 20];
        for gib in 0..4u64 {
            f.seek(SeekFrom::Start(gib * (4 << 30))).unwrap();
            for part in 0..64u64 {
                noise(&mut buf, gib * 1000 + part + 1);
                f.write_all(&buf).unwrap();
            }
        }
        f.set_len(16 << 30).unwrap();
    }
    let (status, backup_kib, out) =
        run_measured(env.cmd(&["backup", "--json", "--vm", "big", img.to_str().unwrap()]));
    assert!(status.success(), "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["bytes_new"], 4u64 << 30);
    eprintln!(
        "backup of 16 GiB (4 GiB random): peak RSS {} MiB",
        backup_kib / 1024
    );
    assert!(backup_kib < LIMIT_KIB, "backup peaked at {backup_kib} KiB");
    let _ = std::fs::remove_file(&img);

    let target = env.path("out");
    let (status, restore_kib, out) = run_measured(env.cmd(&[
        "restore",
        "big:latest",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert!(status.success(), "{out}");
    eprintln!(
        "restore of 16 GiB (4 GiB random): peak RSS {} MiB",
        restore_kib / 1024
    );
    assert!(
        restore_kib < LIMIT_KIB,
        "restore peaked at {restore_kib} KiB"
    );
    let restored = target.join("big.img");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), 16 << 30);
    assert!(allocated(&restored) < 5 << 30, "the holes were written");
    // Spot-check content: the first MiB of the third data GiB.
    let mut want = vec![0u8; 16 << 20];
    noise(&mut want, 2 * 1000 + 1);
    let mut got = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&restored).unwrap(),
        &mut got,
        8 << 30,
    )
    .unwrap();
    assert_eq!(got, want[..1 << 20]);
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    st.f_bavail as u64 * st.f_frsize as u64
}
