//! File-level restore from image backups, on images made by the tools administrators use:
//! GPT + ext4 (`mkfs.ext4 -d`), MBR with a logical partition, a Windows-like GPT disk with
//! a FAT32 ESP (`mcopy`) and NTFS (`mkntfs` + ntfs-3g), XFS (`mkfs.xfs -p`), LVM2 (`pvcreate`,
//! `lvcreate`), a whole-disk ext4 with a dirty journal, and a LUKS volume. For each, `ls`,
//! `dump` and `restore --path` must give back exactly the tree the image was built from.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True if `cmd` exists; loud when it does not, and fatal in CI (which installs it).
fn have(cmd: &str) -> bool {
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} || test -x /sbin/{cmd} || test -x /usr/sbin/{cmd}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("WARNING: {cmd} is not installed: this test cannot run (tools/install-deps.sh installs it)");
        assert!(std::env::var_os("CI").is_none(), "{cmd} missing in CI");
    }
    ok
}

fn set_mtime(p: &Path, sec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// What to build into a source tree.
#[derive(Clone, Copy)]
struct Shape {
    /// Symlinks and Unix modes (not on FAT).
    unix: bool,
    /// Names FAT and NTFS cannot hold (`:`, a non-UTF-8 name).
    odd_names: bool,
}

/// A small tree: nested dirs, text and random files, a 2 MiB file, a sparse file (unix),
/// a symlink (unix), modes, whole-second mtimes (as mkfs.ext4 -d and FAT keep them).
fn make_src(dir: &Path, shape: Shape, seed: u64) {
    std::fs::create_dir_all(dir.join("etc/nginx/sites")).unwrap();
    std::fs::create_dir_all(dir.join("var/www/html")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(
        dir.join("etc/nginx/nginx.conf"),
        format!("worker_processes {seed};\nserver {{ listen 80; }}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("etc/hostname"), "web01\n").unwrap();
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("etc/nginx/sites/site{i:02}.conf")),
            format!("server_name s{i}.example;\n").repeat(i + 1),
        )
        .unwrap();
    }
    let mut big = vec![0u8; 2 * MIB as usize + 12345];
    noise(&mut big, seed);
    std::fs::write(dir.join("var/www/html/blob.bin"), &big).unwrap();
    std::fs::write(dir.join("var/www/html/index.html"), "<h1>hello</h1>\n").unwrap();
    std::fs::write(dir.join("var/www/empty.txt"), "").unwrap();
    if shape.unix {
        let f = std::fs::File::create(dir.join("var/sparse.img")).unwrap();
        f.set_len(8 * MIB).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&big[..100_000], 5 * MIB).unwrap();
        std::os::unix::fs::symlink("nginx/nginx.conf", dir.join("etc/nginx.link")).unwrap();
        std::os::unix::fs::symlink("/var/www/html", dir.join("www")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(dir.join("var/www"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
    }
    std::fs::write(dir.join("var/www/Grüße_日本.txt"), "unicode\n").unwrap();
    if shape.odd_names {
        std::fs::write(dir.join("var/www/a:b c.txt"), "colon\n").unwrap();
        std::fs::write(
            dir.join(std::ffi::OsStr::from_bytes(b"var/www/caf\xe9.txt")),
            "latin-1\n",
        )
        .unwrap();
    }
    // Whole-second mtimes, children before parents.
    let mut all = Vec::new();
    walk_host(dir, &mut all);
    all.reverse();
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_700_000_000 + i as i64 * 7 + seed as i64 * 1000);
    }
    set_mtime(dir, 1_700_000_000);
}

fn walk_host(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    for p in v {
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk_host(&p, out);
        }
    }
}

/// How closely a restored tree must match its source.
#[derive(Clone, Copy)]
struct Fidelity {
    modes: bool,
    owners: bool,
    /// mtime tolerance in seconds (None: not compared).
    mtime: Option<i64>,
}

/// Asserts that `got` holds `want`'s tree: names, types, sizes, content, symlink targets,
/// and what `f` asks for.
fn assert_tree(got: &Path, want: &Path, f: Fidelity) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk_host(got, &mut a);
    walk_host(want, &mut b);
    let rel = |base: &Path, v: &[PathBuf]| -> BTreeMap<Vec<u8>, PathBuf> {
        v.iter()
            .map(|p| {
                (
                    p.strip_prefix(base)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                    p.clone(),
                )
            })
            .collect()
    };
    let (a, b) = (rel(got, &a), rel(want, &b));
    let names = |m: &BTreeMap<Vec<u8>, PathBuf>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b), "names differ");
    for (k, wp) in &b {
        let gp = &a[k];
        let (gm, wm) = (
            std::fs::symlink_metadata(gp).unwrap(),
            std::fs::symlink_metadata(wp).unwrap(),
        );
        let name = String::from_utf8_lossy(k);
        assert_eq!(gm.file_type(), wm.file_type(), "{name}: type");
        if wm.is_file() {
            assert_eq!(gm.len(), wm.len(), "{name}: size");
            assert!(
                std::fs::read(gp).unwrap() == std::fs::read(wp).unwrap(),
                "{name}: content"
            );
        }
        if wm.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(gp).unwrap(),
                std::fs::read_link(wp).unwrap(),
                "{name}: target"
            );
            continue;
        }
        if f.modes {
            assert_eq!(gm.mode() & 0o7777, wm.mode() & 0o7777, "{name}: mode");
        }
        if f.owners {
            assert_eq!((gm.uid(), gm.gid()), (wm.uid(), wm.gid()), "{name}: owner");
        }
        if let Some(tol) = f.mtime {
            assert!(
                (gm.mtime() - wm.mtime()).abs() <= tol,
                "{name}: mtime {} vs {}",
                gm.mtime(),
                wm.mtime()
            );
        }
    }
}

/// An empty sparse file.
fn sparse(p: &Path, size: u64) {
    std::fs::File::create(p).unwrap().set_len(size).unwrap();
}

fn sfdisk(img: &Path, script: &str) {
    let mut c = Command::new("sfdisk")
        .args(["-q", s(img)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
}

/// Copies `src` (a filesystem image) into `img` at byte `offset`.
fn place(src: &Path, img: &Path, offset: u64) {
    sh(
        "dd",
        &[
            &format!("if={}", s(src)),
            &format!("of={}", s(img)),
            "bs=1M",
            &format!("seek={}", offset / MIB),
            "conv=notrunc,sparse",
            "status=none",
        ],
    );
}

fn ls_json(env: &Env, snap: &str, path: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["ls", "--json", snap, path])).unwrap();
    v.as_array().unwrap().clone()
}

/// `restore --path VOLUME` into a fresh folder; returns the restored tree's root.
fn restore_volume(env: &Env, snap: &str, volume: &str) -> PathBuf {
    let out = env.path(&format!("out-{}", volume.replace('/', "_")));
    env.ok(&["restore", snap, "--path", volume, "--target", s(&out)]);
    out.join(volume.rsplit('/').next().unwrap())
}

/// The checks every filesystem gets: `ls` of the volume and a directory, `dump` of a file,
/// `restore --path` of a subtree and of the whole volume, compared with the source.
fn check_volume(env: &Env, volume: &str, src: &Path, f: Fidelity, ignore: &[&str]) {
    let rows = ls_json(env, "latest", &format!("{volume}/etc/nginx"));
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"nginx.conf") && names.contains(&"sites"),
        "{names:?}"
    );
    let conf = rows.iter().find(|r| r["name"] == "nginx.conf").unwrap();
    assert_eq!(
        conf["size"],
        std::fs::metadata(src.join("etc/nginx/nginx.conf"))
            .unwrap()
            .len()
    );
    let got = env.ok(&["dump", "latest", &format!("{volume}/etc/nginx/nginx.conf")]);
    assert_eq!(
        got.as_bytes(),
        std::fs::read(src.join("etc/nginx/nginx.conf")).unwrap()
    );
    let root = restore_volume(env, "latest", volume);
    for i in ignore {
        let p = root.join(i);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    assert_tree(&root, src, f);
    let sub = env.path(&format!("sub-{}", volume.replace('/', "_")));
    env.ok(&[
        "restore",
        "latest",
        "--path",
        &format!("{volume}/var/www"),
        "--target",
        s(&sub),
    ]);
    assert_tree(&sub.join("www"), &src.join("var/www"), f);
}

const UNIX: Fidelity = Fidelity {
    modes: true,
    owners: true,
    mtime: Some(0),
};

#[test]
fn gpt_ext4_ls_dump_restore_path() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    make_src(
        &src,
        Shape {
            unix: true,
            odd_names: true,
        },
        1,
    );
    let img = env.path("disk0.img");
    make_ext4_image(&img, 128 * MIB, &src);
    env.backup("web01", &[&img], &[]);
    let top = ls_json(&env, "web01:latest", "/");
    assert_eq!(top[0]["kind"], "disk");
    let p1 = top
        .iter()
        .find(|r| r["path"] == "/disk0.img/p1")
        .expect("p1");
    assert_eq!(p1["content"]["detail"], "ext4", "{p1}");
    check_volume(&env, "/disk0.img/p1", &src, UNIX, &["lost+found"]);
    // The sparse file comes back sparse.
    let out = env.path("sparse-out");
    env.ok(&[
        "restore",
        "latest",
        "--path",
        "/disk0.img/p1/var/sparse.img",
        "--target",
        s(&out),
    ]);
    assert!(
        allocated(&out.join("sparse.img")) < 2 * MIB,
        "holes were written"
    );
    // Long listing shows the link target; a directory dumps as tar.
    let l = env.ok(&["ls", "-l", "latest", "/disk0.img/p1/etc"]);
    assert!(l.contains("nginx.link -> nginx/nginx.conf"), "{l}");
    let o = env
        .cmd(&["dump", "--archive", "tar", "latest", "/disk0.img/p1/etc"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let tar = env.path("etc.tar");
    std::fs::write(&tar, &o.stdout).unwrap();
    let x = env.path("untar");
    std::fs::create_dir_all(&x).unwrap();
    sh("tar", &["-xf", s(&tar), "-C", s(&x)]);
    assert_tree(
        &x.join("etc"),
        &src.join("etc"),
        Fidelity {
            modes: true,
            owners: true,
            mtime: Some(0),
        },
    );
    // Refusals name the path and the reason.
    let o = env.run(&["dump", "latest", "/disk0.img/p1/etc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    let o = env.run(&["ls", "latest", "/disk0.img/p9"]);
    assert_eq!(o.status.code(), Some(2));
    let o = env.run(&["ls", "latest", "/disk0.img/p1/nope"]);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    // --existing: a second restore of the same path is refused without a terminal.
    let o = env.run(&[
        "restore",
        "latest",
        "--path",
        "/disk0.img/p1/etc",
        "--target",
        s(&sub_of(&env)),
    ]);
    assert!(o.status.success());
    let o = env.run(&[
        "restore",
        "latest",
        "--path",
        "/disk0.img/p1/etc",
        "--target",
        s(&sub_of(&env)),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    env.ok(&[
        "restore",
        "latest",
        "--path",
        "/disk0.img/p1/etc",
        "--target",
        s(&sub_of(&env)),
        "--existing",
        "overwrite",
    ]);
}

fn sub_of(env: &Env) -> PathBuf {
    env.path("twice")
}

#[test]
fn mbr_with_a_logical_partition() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    make_src(
        &src,
        Shape {
            unix: true,
            odd_names: false,
        },
        2,
    );
    let img = env.path("old.img");
    sparse(&img, 96 * MIB);
    sfdisk(
        &img,
        "label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=5\nstart=20480, type=83\n",
    );
    let off = 20480 * 512;
    let kib = (96 * MIB - off) / 1024;
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={off}"),
            "-d",
            s(&src),
            s(&img),
            &format!("{kib}k"),
        ],
    );
    env.backup("old", &[&img], &[]);
    let vols: Vec<String> = ls_json(&env, "latest", "/old.img")
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vols, ["p1", "p2", "p5"]);
    check_volume(&env, "/old.img/p5", &src, UNIX, &["lost+found"]);
}

/// A Windows-like disk: GPT, a FAT32 EFI system partition filled with mtools, and an NTFS
/// partition filled through ntfs-3g.
#[test]
fn windows_disk_with_esp_and_ntfs() {
    if !(have("mkntfs") && have("ntfs-3g") && have("mcopy") && have("mkfs.vfat")) {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let (esp_src, win_src) = (env.path("esp-src"), env.path("win-src"));
    make_src(
        &esp_src,
        Shape {
            unix: false,
            odd_names: false,
        },
        3,
    );
    make_src(
        &win_src,
        Shape {
            unix: false,
            odd_names: false,
        },
        4,
    );
    let fat = env.path("esp.img");
    sparse(&fat, 48 * MIB);
    sh("mkfs.vfat", &["-F", "32", "-n", "ESP", s(&fat)]);
    let o = Command::new("mcopy")
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-i", s(&fat)])
        .args(
            std::fs::read_dir(&esp_src)
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .arg("::/")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ntfs = env.path("ntfs.img");
    sparse(&ntfs, 64 * MIB);
    sh("mkntfs", &["-F", "-Q", "-q", "-L", "Windows", s(&ntfs)]);
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("ntfs-3g", &[s(&ntfs), s(&mnt)]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let guard = Unmount(mnt.clone());
    sh("cp", &["-a", &format!("{}/.", s(&win_src)), s(&mnt)]);
    drop(guard);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let img = env.path("win.img");
    sparse(&img, 128 * MIB);
    sfdisk(&img, "label: gpt\nstart=2048, size=98304, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=100352, size=131072, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n");
    place(&fat, &img, 2048 * 512);
    place(&ntfs, &img, 100352 * 512);
    env.backup("win", &[&img], &[]);
    let vols = ls_json(&env, "latest", "/win.img");
    assert_eq!(vols[0]["content"]["detail"], "vfat", "{vols:?}");
    assert_eq!(vols[0]["label"], "ESP", "{vols:?}");
    assert_eq!(vols[1]["content"]["detail"], "ntfs", "{vols:?}");
    assert_eq!(vols[1]["label"], "Windows", "{vols:?}");
    let fat_f = Fidelity {
        modes: false,
        owners: false,
        mtime: Some(2),
    };
    check_volume(&env, "/win.img/p1", &esp_src, fat_f, &[]);
    let ntfs_f = Fidelity {
        modes: false,
        owners: false,
        mtime: Some(0),
    };
    check_volume(
        &env,
        "/win.img/p2",
        &win_src,
        ntfs_f,
        &["System Volume Information", "$RECYCLE.BIN"],
    );
}

/// An XFS protofile from a tree (mkfs.xfs sets the times itself, so mtimes are not compared).
fn protofile(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        v.sort_by_key(|e| e.file_name());
        for e in v {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let t = if m.is_dir() {
                'd'
            } else if m.file_type().is_symlink() {
                'l'
            } else {
                '-'
            };
            out.push_str(&format!(
                "{name} {t}--{:03o} {} {}",
                m.mode() & 0o777,
                m.uid(),
                m.gid()
            ));
            match t {
                '-' => out.push_str(&format!(" {}\n", p.display())),
                'l' => out.push_str(&format!(" {}\n", std::fs::read_link(&p).unwrap().display())),
                _ => {
                    out.push('\n');
                    walk(&p, out);
                    out.push_str("$\n");
                }
            }
        }
    }
    let mut out = String::from("/cairn-test\n0 0\nd--755 0 0\n");
    walk(dir, &mut out);
    out.push_str("$\n");
    out
}

#[test]
fn xfs_partition() {
    if !have("mkfs.xfs") {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let shape = Shape {
        unix: true,
        odd_names: false,
    };
    make_src(&src, shape, 5);
    // mkfs.xfs -p writes each file as one extent: no holes to keep.
    std::fs::remove_file(src.join("var/sparse.img")).unwrap();
    let proto = env.path("proto");
    std::fs::write(&proto, protofile(&src)).unwrap();
    let xfs = env.path("xfs.img");
    sparse(&xfs, 64 * MIB);
    let o = Command::new("mkfs.xfs")
        .env("TEST_DIR", "1")
        .env("TEST_DEV", "1")
        .env("QA_CHECK_FS", "1")
        .args([
            "-q",
            "-f",
            "-L",
            "data",
            "-d",
            "agcount=2",
            "-p",
            s(&proto),
            s(&xfs),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let img = env.path("rhel.img");
    sparse(&img, 80 * MIB);
    sfdisk(
        &img,
        "label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    );
    place(&xfs, &img, MIB);
    env.backup("rhel", &[&img], &[]);
    let vols = ls_json(&env, "latest", "/rhel.img");
    assert_eq!(vols[0]["content"]["detail"], "xfs", "{vols:?}");
    check_volume(
        &env,
        "/rhel.img/p1",
        &src,
        Fidelity {
            modes: true,
            owners: true,
            mtime: None,
        },
        &[],
    );
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Loop {
        let o = Command::new("losetup")
            .args(["-f", "--show", s(img)])
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn lvm(cmd: &str, args: &[&str], dev: &str) -> String {
    let o = Command::new(cmd)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .args(["--devices", dev, "--driverloaded", "n"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// LVM2 made with the lvm2 tools on a loop device (device-mapper absent: metadata only),
/// an ext4 written at the logical volume's place in the image.
#[test]
fn lvm2_logical_volume() {
    if !(have("losetup") && have("pvcreate") && have("lvcreate")) {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    make_src(
        &src,
        Shape {
            unix: true,
            odd_names: false,
        },
        6,
    );
    let img = env.path("pv.img");
    sparse(&img, 128 * MIB);
    let vg = format!("cairnvg{}", std::process::id());
    {
        let lo = Loop::attach(&img);
        lvm("pvcreate", &["-q", &lo.0], &lo.0);
        lvm("vgcreate", &["-q", &vg, &lo.0], &lo.0);
        lvm(
            "lvcreate",
            &["-q", "-an", "-Zn", "-L", "8M", "-n", "swap", &vg],
            &lo.0,
        );
        lvm(
            "lvcreate",
            &["-q", "-an", "-Zn", "-L", "64M", "-n", "root", &vg],
            &lo.0,
        );
        let pe_start: u64 = lvm(
            "pvs",
            &[
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "pe_start",
                &lo.0,
            ],
            &lo.0,
        )
        .trim()
        .parse()
        .unwrap();
        let ranges = lvm(
            "lvs",
            &["--noheadings", "-o", "seg_pe_ranges", &format!("{vg}/root")],
            &lo.0,
        );
        let first: u64 = ranges
            .trim()
            .rsplit_once(':')
            .unwrap()
            .1
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let off = pe_start + first * 4 * MIB;
        sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                &format!("offset={off}"),
                "-d",
                s(&src),
                s(&img),
                "65536k",
            ],
        );
        lvm("vgremove", &["-q", "-f", &vg], &lo.0);
        // vgremove wiped the metadata: write it again exactly as it was.
        lvm("pvcreate", &["-q", &lo.0], &lo.0);
        lvm("vgcreate", &["-q", &vg, &lo.0], &lo.0);
        lvm(
            "lvcreate",
            &["-q", "-an", "-Zn", "-L", "8M", "-n", "swap", &vg],
            &lo.0,
        );
        lvm(
            "lvcreate",
            &["-q", "-an", "-Zn", "-L", "64M", "-n", "root", &vg],
            &lo.0,
        );
    }
    env.backup("lvm", &[&img], &["--format", "raw"]);
    let vols: Vec<String> = ls_json(&env, "latest", "/pv.img")
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert!(vols.contains(&format!("lvm/{vg}/root")), "{vols:?}");
    check_volume(
        &env,
        &format!("/pv.img/lvm/{vg}/root"),
        &src,
        UNIX,
        &["lost+found"],
    );
}

/// A crash-consistent image (the journal needs recovery) is read as it lies, with a
/// warning; an ext4 on a whole disk is the volume `fs`.
#[test]
fn dirty_journal_on_a_whole_disk_reads_with_a_warning() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    make_src(
        &src,
        Shape {
            unix: true,
            odd_names: false,
        },
        7,
    );
    let img = env.path("data.img");
    sparse(&img, 64 * MIB);
    sh("mkfs.ext4", &["-q", "-F", "-d", s(&src), s(&img)]);
    sh("debugfs", &["-w", "-R", "feature needs_recovery", s(&img)]);
    env.backup("db", &[&img], &[]);
    let o = env.run(&["ls", "latest", "/data.img/fs/etc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("journal needs recovery"),
        "{}",
        stderr(&o)
    );
    check_volume(&env, "/data.img/fs", &src, UNIX, &["lost+found"]);
}

/// A LUKS partition is listed and refused with its reason; the other partitions read.
#[test]
fn luks_is_refused_by_name() {
    if !have("cryptsetup") {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let luks = env.path("luks.img");
    sparse(&luks, 32 * MIB);
    std::fs::write(env.path("key"), "secret").unwrap();
    sh(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--key-file",
            s(&env.path("key")),
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            s(&luks),
        ],
    );
    let img = env.path("enc.img");
    sparse(&img, 48 * MIB);
    sfdisk(&img, "label: gpt\nstart=2048, size=65536\n");
    place(&luks, &img, MIB);
    env.backup("enc", &[&img], &[]);
    let vols = ls_json(&env, "latest", "/enc.img");
    assert_eq!(vols[0]["content"]["state"], "refused", "{vols:?}");
    assert!(
        vols[0]["content"]["detail"]
            .as_str()
            .unwrap()
            .contains("LUKS"),
        "{vols:?}"
    );
    let o = env.run(&["ls", "latest", "/enc.img/p1/etc"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("/enc.img/p1") && stderr(&o).contains("LUKS"),
        "{}",
        stderr(&o)
    );
}

/// `find` shows every version of a file across three snapshots in which it changed, from
/// the catalogs written at backup time.
#[test]
fn find_finds_each_version() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("disk0.img");
    let mut sizes = Vec::new();
    for night in 0..3u64 {
        let src = env.path(&format!("src{night}"));
        make_src(
            &src,
            Shape {
                unix: true,
                odd_names: false,
            },
            10 + night,
        );
        std::fs::write(
            src.join("etc/nginx/nginx.conf"),
            "x".repeat(100 + night as usize * 10),
        )
        .unwrap();
        sizes.push(100 + night * 10);
        let _ = std::fs::remove_file(&img);
        make_ext4_image(&img, 96 * MIB, &src);
        let r = env.backup(
            "web01",
            &[&img],
            &["--time", &format!("2026-11-2{}T04:00:00+00:00", night + 1)],
        );
        assert!(r["catalog"]["entries"].as_u64().unwrap() > 40, "{r}");
        // Read whole, the disk is walked from the source.
        assert_eq!(r["catalog"]["bytes_from_parent"], 0, "{r}");
    }
    // A changed-block night (the map names bytes that did not really change): the catalog
    // is walked through the map, beside the re-chunking.
    sh("touch", &[img.to_str().unwrap()]);
    let map = env.path("cbt.json");
    std::fs::write(
        &map,
        format!("[{{\"offset\":{},\"length\":65536}}]", 90 * MIB),
    )
    .unwrap();
    let r = env.backup(
        "web01",
        &[&img],
        &[
            "--changed-extents",
            map.to_str().unwrap(),
            "--time",
            "2026-11-24T04:00:00+00:00",
        ],
    );
    assert_eq!(r["items"][0]["changed_blocks"]["map"], "extents", "{r}");
    assert!(r["catalog"]["entries"].as_u64().unwrap() > 40, "{r}");
    // Through the map, the walk's metadata comes from the parent's chunks, and is counted
    // as the catalog's, not as the re-chunking's.
    assert!(
        r["catalog"]["bytes_from_parent"].as_u64().unwrap() > 0,
        "{r}"
    );
    sizes.push(120);
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["find", "--json", "--vm", "web01", "--name", "nginx.conf"]))
            .unwrap();
    let got: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["size"].as_u64().unwrap())
        .collect();
    assert_eq!(got, sizes, "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["find", "--json", "--path", "/*/p1/etc/nginx/sites/**"]))
            .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4 * 40);
    // A snapshot written without a catalog is searched by walking its filesystems.
    env.backup("web01", &[&img], &["--no-catalog", "--force-read"]);
    let o = env.run(&["find", "--name", "hostname"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no file catalog"), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("5 matches in 5 snapshots"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
