//! Images filled through a loop mount, for what mkfs.xfs -p cannot make.

use super::*;

/// A loop mount of `img` at `dir`, unmounted on drop; None (with a warning) where the
/// kernel will not mount it.
pub(super) struct Mount(PathBuf);

impl Mount {
    pub(super) fn new(img: &Path, dir: &Path) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(img)
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "WARNING: cannot loop-mount XFS here ({}); the kernel-built XFS tests \
                     (btree-format files, holes, unwritten extents, hard links, dirty log) \
                     are skipped",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("WARNING: cannot run mount ({e}); kernel-built XFS tests skipped");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `blocks` blocks of `bs` bytes to two new files in turn with O_DIRECT, so the
/// allocator gives each block its own extent; the same content goes to `twin` (plain).
pub(super) fn interleaved(mnt: &Path, twin: &Path, names: [&str; 2], blocks: usize, bs: usize) {
    use std::os::unix::fs::FileExt;
    let mut raw = vec![0u8; bs * 2];
    let pad = raw.as_ptr().align_offset(bs);
    let open = |p: PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    };
    let files = names.map(|n| open(mnt.join(n)));
    let mut twins: Vec<Vec<u8>> = vec![Vec::new(), Vec::new()];
    for i in 0..blocks {
        for (k, f) in files.iter().enumerate() {
            let data = pattern((i * 2 + k) as u64 + 1000, bs);
            raw[pad..pad + bs].copy_from_slice(&data);
            f.write_all_at(&raw[pad..pad + bs], (i * bs) as u64)
                .unwrap();
            twins[k].extend_from_slice(&data);
        }
    }
    for (k, n) in names.iter().enumerate() {
        std::fs::write(twin.join(n), &twins[k]).unwrap();
    }
}

/// Copies the atime and mtime of `from` to `to` (files written twice, on the host tree
/// and through the mount).
fn same_times(from: &Path, to: &Path) {
    run(Command::new("touch").arg("-h").arg("-r").arg(from).arg(to));
}

#[test]
fn kernel_built_image() {
    if !testutil::have("mkfs.xfs") || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, img, mnt) = (
        tmp.path().join("src"),
        tmp.path().join("img"),
        tmp.path().join("mnt"),
    );
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, &SMALL);
    // What only the kernel makes: hard links, a sticky directory, a socket, holes.
    std::fs::hard_link(src.join("odd.bin"), src.join("a/odd_link")).unwrap();
    std::fs::create_dir(src.join("tmp")).unwrap();
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let holey = std::fs::File::create(src.join("holey")).unwrap();
    for i in 0..8u64 {
        use std::os::unix::fs::FileExt;
        holey
            .write_all_at(&pattern(i + 50, 65536), i << 20)
            .unwrap();
    }
    holey.set_len(9 << 20).unwrap();
    drop(holey);
    // 1 KiB blocks: 1500 extents need a bmap btree of two levels.
    mkfs(&img, &["-b", "size=1024"], None);
    {
        let Some(_m) = Mount::new(&img, &mnt) else {
            return;
        };
        run(Command::new("cp")
            .arg("-a")
            .arg("--sparse=always")
            .arg(format!("{}/.", src.display()))
            .arg(&mnt));
        interleaved(&mnt, &src, ["frag_a", "frag_b"], 1500, 1024);
        // Unwritten extents: 1 MiB preallocated, 4 KiB of it written.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(mnt.join("prealloc"))
            .unwrap();
        // SAFETY: a valid descriptor.
        assert_eq!(
            unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 1 << 20) },
            0
        );
        std::os::unix::fs::FileExt::write_all_at(&f, &pattern(99, 4096), 512 << 10).unwrap();
        drop(f);
        let mut twin = vec![0u8; 1 << 20];
        twin[512 << 10..(512 << 10) + 4096].copy_from_slice(&pattern(99, 4096));
        std::fs::write(src.join("prealloc"), twin).unwrap();
        // A reflinked copy shares the big file's extents.
        run(Command::new("cp")
            .arg("--reflink=always")
            .arg(mnt.join("big.bin"))
            .arg(mnt.join("big_clone")));
        std::fs::copy(src.join("big.bin"), src.join("big_clone")).unwrap();
        for n in ["frag_a", "frag_b", "prealloc", "big_clone"] {
            same_times(&src.join(n), &mnt.join(n));
        }
    }
    let fs = open_img(&img);
    assert_eq!(fs.warnings(), Vec::<String>::new(), "cleanly unmounted");
    testutil::assert_same_tree(&fs, &src, Compare::UNIX, &[]);
    let root = fs.root();
    let (a, b) = (
        child(&fs, root, "odd.bin"),
        child(&fs, child(&fs, root, "a").ino, "odd_link"),
    );
    assert_eq!(a.ino, b.ino, "hard link");
    assert_eq!(fs.stat(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.stat(child(&fs, root, "tmp").ino).unwrap().mode, 0o1777);
    assert_eq!(child(&fs, root, "sock").kind, FileType::Socket);
    for n in ["frag_a", "frag_b"] {
        let ino = child(&fs, root, n).ino;
        let inode = fs.inode(ino).unwrap();
        assert_eq!(inode.format, FMT_BTREE, "{n}");
        assert!(
            u16::from_be_bytes([inode.fork[0], inode.fork[1]]) >= 2,
            "{n}: root level"
        );
        assert!(fs.map(ino).unwrap().len() >= 1500);
    }
    let holey = child(&fs, root, "holey").ino;
    let want: Vec<_> = (0..8u64).map(|i| i << 20..(i << 20) + 65536).collect();
    assert_eq!(crate::fs::data_ranges(&fs, holey, 9 << 20).unwrap(), want);
    let pre = fs.map(child(&fs, root, "prealloc").ino).unwrap();
    let written: Vec<_> = pre
        .iter()
        .filter(|m| m.data)
        .map(|m| (m.file_offset, m.len))
        .collect();
    assert_eq!(written, vec![(512 << 10, 4096)]);
    assert!(
        pre.iter().any(|m| !m.data && m.disk_offset.is_some()),
        "unwritten extents"
    );
    let (big, clone) = (
        child(&fs, root, "big.bin").ino,
        child(&fs, root, "big_clone").ino,
    );
    assert_eq!(
        fs.map(big).unwrap(),
        fs.map(clone).unwrap(),
        "reflinked extents"
    );
    check_lookups(&fs);
    check_used_blocks(&fs, &img);
    drop(fs);

    // Crash: commit a transaction to the log, then shut down without an unmount record.
    {
        let Some(_m) = Mount::new(&img, &mnt) else {
            return;
        };
        std::fs::write(mnt.join("after_crash"), b"late").unwrap();
        run(Command::new("sync").arg("-f").arg(mnt.join("after_crash")));
        run(Command::new(tool("xfs_io"))
            .args(["-x", "-c", "shutdown"])
            .arg(&mnt));
    }
    let fs = open_img(&img);
    assert_eq!(fs.warnings(), vec![DIRTY_LOG_WARNING.to_string()]);
    testutil::bounded_walk(&fs).unwrap();
}
