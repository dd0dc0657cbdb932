//! Helpers for the integration tests: they build real disk images with the tools
//! administrators use (sfdisk, mkfs.ext4 -d, qemu-img, qemu-io) and run the real binary.
#![allow(dead_code)]

pub mod faultproxy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// A scratch folder with a repository, a cache and a password, torn down on drop.
///
/// With `CAIRN_TEST_BACKEND=s3` the repository lives on a real S3 server (`s3s-fs`,
/// started for this test on a free loopback port): every integration test then runs
/// against object storage. `s3s-fs` keeps each object as a plain file under
/// `<root>/<bucket>/<key>`, so `repo` still points at the repository's objects and tests
/// can look at (and damage) them as on a local repository.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The repository's objects on the local filesystem.
    pub repo: PathBuf,
    pub password: String,
    /// `s3:http://127.0.0.1:PORT/bkt/repo` on S3, else the path of `repo`.
    pub url: String,
    s3: Option<std::process::Child>,
    /// The loopback port of the S3 server, on S3.
    pub s3_port: Option<u16>,
}

pub const S3_KEY: &str = "cairntest";
pub const S3_SECRET: &str = "cairntestsecret";

/// True when the integration tests run against S3.
pub fn on_s3() -> bool {
    std::env::var("CAIRN_TEST_BACKEND").is_ok_and(|v| v == "s3")
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = &mut self.s3 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir_in(scratch_root())
            .unwrap();
        if !on_s3() {
            let repo = dir.path().join("repo");
            return Env {
                url: repo.display().to_string(),
                dir,
                repo,
                password: "correct horse".into(),
                s3: None,
                s3_port: None,
            };
        }
        Env::new_s3_in(dir)
    }

    /// A repository on a real S3 server whatever `CAIRN_TEST_BACKEND` says.
    pub fn new_s3() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir_in(scratch_root())
            .unwrap();
        Env::new_s3_in(dir)
    }

    fn new_s3_in(dir: tempfile::TempDir) -> Env {
        let root = dir.path().join("s3");
        std::fs::create_dir_all(root.join("bkt")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (cargo install s3s-fs --features binary) is needed with CAIRN_TEST_BACKEND=s3");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // For tests that open the repository through the library.
        std::env::set_var("AWS_ACCESS_KEY_ID", S3_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", S3_SECRET);
        Env {
            url: format!("s3:http://127.0.0.1:{port}/bkt/repo"),
            repo: root.join("bkt/repo"),
            dir,
            password: "correct horse".into(),
            s3: Some(child),
            s3_port: Some(port),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A cairn command with this environment's repository, password and cache.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CAIRN_REPOSITORY", &self.url)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("CAIRN_PASSWORD", &self.password)
            .env("CAIRN_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("CAIRN_PASSWORD_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "cairn {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs `backup --json` and returns the report.
    pub fn backup(&self, vm: &str, disks: &[&Path], extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["backup", "--json", "--vm", vm];
        args.extend_from_slice(extra);
        let ds: Vec<String> = disks.iter().map(|d| d.display().to_string()).collect();
        args.extend(ds.iter().map(|s| s.as_str()));
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    pub fn init(&self, extra: &[&str]) {
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// The files in folder `dir` of the repository (none if it does not exist).
    pub fn list(&self, dir: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match std::fs::read_dir(self.repo.join(dir)) {
            Ok(rd) => rd.map(|f| f.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// The complete packs (a pack being written is a `.tmp-…` file in `data/`).
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.repo.join("data")).unwrap() {
            let d = d.unwrap().path();
            if !d.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out.sort();
        out
    }
}

/// Where scratch images go: $CAIRN_TEST_DIR or the system temp dir.
pub fn scratch_root() -> PathBuf {
    std::env::var_os("CAIRN_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

pub fn sh(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Allocated bytes of a file (st_blocks), to show that holes stayed holes.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(buf: &mut [u8], seed: u64) {
    // Spread the seed so that neighbouring seeds give unrelated streams.
    let mut s = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in buf.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// A file tree that looks like an OS install: text that compresses, binaries that
/// partly do, random data that does not. About `mib` MiB; the same seed gives the same tree.
pub fn make_tree(dir: &Path, mib: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        "kernel", "systemd", "config", "error", "backup", "disk", "vm", "cairn", "0x1f", "eth0",
        "root", "/usr/lib",
    ];
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut written = 0usize;
    let mut i = 0;
    while written < mib << 20 {
        let sub = dir.join(format!("d{}", i % 16));
        std::fs::create_dir_all(&sub).unwrap();
        let size = 4096 + (next() % (2 << 20)) as usize;
        let mut f = std::fs::File::create(sub.join(format!("f{i}"))).unwrap();
        let mut data = Vec::with_capacity(size);
        match i % 5 {
            0 => {
                data.resize(size, 0);
                noise(&mut data, next());
            }
            _ => {
                while data.len() < size {
                    let w = words[(next() % words.len() as u64) as usize];
                    write!(data, "{w} {} ", next() % 100000).unwrap();
                    if next() % 8 == 0 {
                        data.push(b'\n');
                    }
                }
                data.truncate(size);
            }
        }
        f.write_all(&data).unwrap();
        written += size;
        i += 1;
    }
}

/// A sparse raw disk image of `size` bytes with a GPT (sfdisk) and one ext4 partition at
/// 1 MiB made by `mkfs.ext4 -d tree`, the way an administrator builds a test VM disk.
pub fn make_ext4_image(img: &Path, size: u64, tree: &Path) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let mut c = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (package fdisk) is needed");
    c.stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, type=L\n")
        .unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk failed");
    let part_kib = (size - (1 << 20) - (1 << 20)) / 1024; // leave room for the backup GPT
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "offset=1048576",
            "-d",
            tree.to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{part_kib}k"),
        ],
    );
}

/// Writes `len` bytes of pattern `p` at `off` with qemu-io, as a running guest would.
pub fn qemu_write(img: &Path, pattern: u8, off: u64, len: u64) {
    sh(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P 0x{pattern:02x} {off} {len}"),
            img.to_str().unwrap(),
        ],
    );
}

/// A sparse image of `size` bytes with `data` bytes of random content at its start.
pub fn make_random_image(img: &Path, size: u64, data: u64, seed: u64) {
    let mut f = std::fs::File::create(img).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut written = 0;
    let mut s = seed;
    while written < data {
        s += 1;
        let n = buf.len().min((data - written) as usize);
        noise(&mut buf[..n], s);
        f.write_all(&buf[..n]).unwrap();
        written += n as u64;
    }
    f.set_len(size).unwrap();
}

/// Runs a command to completion; returns its status, peak RSS in KiB (from wait4's
/// rusage, the kernel's own count) and its stdout followed by its stderr.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also yields the rusage
pub fn run_measured(mut cmd: Command) -> (std::process::ExitStatus, u64, String) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut se = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        se.read_to_string(&mut s).unwrap();
        s
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out.push_str(&err.join().unwrap());
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    (
        std::process::ExitStatus::from_raw(status),
        ru.ru_maxrss as u64,
        out,
    )
}

/// Runs qemu-img with `args`, asserting success.
pub fn qemu_img(args: &[&str]) {
    sh("qemu-img", args);
}

/// A sparse raw image of `size` bytes (at least 64 MiB) whose content is what format
/// readers must get right: random regions (some starting and ending mid-cluster), a
/// region of one repeated byte, a region written as zeros, holes, and random data up to
/// the last byte.
pub fn make_mixed_image(img: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    assert!(size >= 64 << 20);
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    let regions: [(u64, u64); 5] = [
        (0, 3 << 20),
        ((10 << 20) + 4096, 5 << 20),
        ((40 << 20) + 12345, (1 << 20) + 777),
        ((52 << 20) + 512, 300 << 10),
        (size - (1 << 20) + 512, (1 << 20) - 512),
    ];
    for (i, (off, len)) in regions.iter().enumerate() {
        let mut buf = vec![0u8; *len as usize];
        noise(&mut buf, seed * 100 + i as u64);
        f.write_all_at(&buf, *off).unwrap();
    }
    f.write_all_at(&vec![0xab; 2 << 20], 30 << 20).unwrap();
    f.write_all_at(&vec![0; 1 << 20], 20 << 20).unwrap();
    f.sync_all().unwrap();
}

/// `qemu-img convert -f FMT -O raw SRC DST`: the guest's view of an image as qemu reads
/// it, the reference every reader is compared with.
pub fn qemu_raw(fmt: &str, src: &Path, dst: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        fmt,
        "-O",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
}

/// `qemu-img convert -q -f raw -O FMT [OPTS] RAW DST`: a raw image in another format.
pub fn convert_raw(raw: &Path, fmt: &str, opts: &[&str], dst: &Path) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", fmt];
    args.extend_from_slice(opts);
    args.extend([raw.to_str().unwrap(), dst.to_str().unwrap()]);
    qemu_img(&args);
}

/// `qemu-img create -f FMT -b BACKING -F FMT NAME`, run in `dir` so the backing (parent)
/// name stays relative, as in a VM folder.
pub fn create_overlay(dir: &Path, fmt: &str, backing: &str, name: &str) {
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", fmt, "-b", backing, "-F", fmt, name])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img create {name} over {backing}: {o:?}"
    );
}
