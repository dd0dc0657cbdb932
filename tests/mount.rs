//! `cairn mount`: the real binary mounting a repository over FUSE, read through the kernel
//! with std::fs as any tool would, compared with the sources; unmounted from outside and
//! by SIGINT.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether FUSE can be mounted here; a loud warning (and a failure in CI) if not.
fn have_fuse() -> bool {
    let tool = Command::new("sh")
        .args([
            "-c",
            "command -v fusermount3 || test -x /usr/bin/fusermount3",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let dev = Path::new("/dev/fuse").exists();
    if !(tool && dev) {
        eprintln!(
            "WARNING: FUSE is not available here (/dev/fuse: {dev}, fusermount3: {tool}); \
             the mount tests cannot run without it"
        );
        if std::env::var_os("CI").is_some() {
            panic!("FUSE is missing in CI");
        }
    }
    tool && dev
}

fn is_mounted(mnt: &Path) -> bool {
    let canon = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A running `cairn mount`; dropping it unmounts (lazily, so a failing test never leaves
/// a mount behind) and reaps the process.
struct Mounted {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Starts `cairn mount MNT` and waits until `MNT/<vm>/latest` appears.
    fn start(env: &Env, mnt: &Path, vm: &str) -> Mounted {
        let log = env.path(&format!(
            "mount-{}.log",
            mnt.file_name().unwrap().to_string_lossy()
        ));
        let child = env
            .cmd(&["mount", mnt.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let latest = mnt.join(vm).join("latest");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::symlink_metadata(&latest).is_err() {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cairn mount exited with {st}: {}", m.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not appear: {}",
                latest.display(),
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().unwrap().id() as libc::pid_t
    }

    /// Waits (a few seconds at most) for the command to end; returns its exit code.
    fn wait_exit(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cairn mount did not exit: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "-q"])
                .arg(&self.mnt)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every path below `dir`, as `/<prefix>/<relative path>`, without following links.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), &p, out);
        }
        out.insert(p);
    }
}

#[test]
fn mount_serves_every_snapshot_read_only() {
    if !have_fuse() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let tree = env.path("tree");
    make_tree(&tree, 6, 7);
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::os::unix::fs::symlink("../d0/f0", tree.join("etc/link")).unwrap();
    let img = env.path("disk.img");
    let size = 32 << 20;
    // A second disk with no filesystem cairn reads: only its raw image and a note.
    let data = env.path("data.img");
    make_random_image(&data, 4 << 20, 3 << 20, 11);
    let data_sha = sha256(&data);
    let mut generations = Vec::new();
    for (i, text) in ["first version\n", "second, longer version\n"]
        .iter()
        .enumerate()
    {
        std::fs::write(tree.join("etc/config"), text).unwrap();
        make_ext4_image(&img, size, &tree);
        let r = env.backup("web/01", &[&img, &data], &[]);
        let time = r["time"].as_str().unwrap().to_string();
        let id = r["snapshot"].as_str().unwrap().to_string();
        generations.push((time, id, text.to_string(), sha256(&img)));
        if i == 0 {
            std::thread::sleep(Duration::from_millis(5)); // distinct times
        }
    }

    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::start(&env, &mnt, "web_01");
    let vm = mnt.join("web_01"); // '/' in a VM name becomes '_'
    let names: BTreeSet<String> = std::fs::read_dir(&vm)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = generations
        .iter()
        .map(|g| g.0.clone())
        .chain(["latest".to_string()])
        .collect();
    assert_eq!(names, want);
    assert_eq!(
        std::fs::read_link(vm.join("latest")).unwrap(),
        Path::new(&generations[1].0)
    );

    for (time, id, text, image_sha) in &generations {
        let snap = vm.join(time);
        let vol = snap.join("files/disk.img/p1");
        // Both generations, each with its own content.
        assert_eq!(
            &std::fs::read_to_string(vol.join("etc/config")).unwrap(),
            text
        );
        assert_eq!(
            std::fs::read(vol.join("d0/f0")).unwrap(),
            std::fs::read(tree.join("d0/f0")).unwrap()
        );
        assert_eq!(sha256(&vol.join("d1/f1")), sha256(&tree.join("d1/f1")));
        assert_eq!(
            std::fs::read_link(vol.join("etc/link")).unwrap(),
            Path::new("../d0/f0")
        );
        // The link resolves inside the mount, as on the guest.
        assert_eq!(
            std::fs::read(vol.join("etc/link")).unwrap(),
            std::fs::read(tree.join("d0/f0")).unwrap()
        );
        // The same paths as `cairn ls -R`.
        let mut walked = BTreeSet::new();
        walk(&vol, "/disk.img/p1", &mut walked);
        let listed: BTreeSet<String> = env
            .ok(&["ls", "-R", &id[..12], "/disk.img/p1"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(walked, listed);
        // One readable volume: nothing left out, so no README.
        let vols: Vec<String> = std::fs::read_dir(snap.join("files/disk.img"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(vols, ["p1"]);
        // The raw disk, byte for byte.
        let disk = snap.join("disks/disk.img");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), size);
        assert_eq!(&sha256(&disk), image_sha);
        assert_eq!(sha256(&snap.join("disks/data.img")), data_sha);
        let left: Vec<String> = std::fs::read_dir(snap.join("files/data.img"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["README-unreadable-volumes"]);
        let why =
            std::fs::read_to_string(snap.join("files/data.img/README-unreadable-volumes")).unwrap();
        assert!(
            why.contains("/data.img/fs: no filesystem cairn reads"),
            "{why}"
        );
    }

    // Read-only, whatever is tried.
    let file = vm.join("latest/files/disk.img/p1/etc/config");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
        "{err}"
    );
    let err = std::fs::write(vm.join("latest/files/disk.img/p1/new"), b"x").unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
        "{err}"
    );
    assert!(std::fs::remove_file(vm.join("latest/disks/disk.img")).is_err());
    // Guest inode numbers are not shown: the same file in two snapshots has two numbers.
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(vm.join(&generations[0].0).join("files/disk.img/p1/d0/f0"));
    let b = std::fs::metadata(vm.join(&generations[1].0).join("files/disk.img/p1/d0/f0"));
    assert_ne!(a.unwrap().ino(), b.unwrap().ino());

    // Unmounted from outside: the command ends by itself, successfully.
    sh("fusermount3", &["-u", mnt.to_str().unwrap()]);
    assert_eq!(m.wait_exit(), 0, "{}", m.stderr());
    assert!(!is_mounted(&mnt));
    assert!(m.stderr().contains("mounted 2 snapshots of 1 VMs on"));

    // A non-empty mount point is refused.
    let o = env.run(&["mount", env.dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));

    // Ctrl-C: unmounts and exits 0.
    let mut m = Mounted::start(&env, &mnt, "web_01");
    assert!(is_mounted(&mnt));
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(m.pid(), libc::SIGINT) }, 0);
    assert_eq!(m.wait_exit(), 0, "{}", m.stderr());
    assert!(!is_mounted(&mnt));
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}
