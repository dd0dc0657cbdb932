//! Whole VMs the VMware Consolidated Backup way: a VM folder as the hypervisor left it
//! (a `.vmx`, two disks of which one is a delta chain, a lock, a log, swap) is backed up
//! and comes back elsewhere as a folder the hypervisor opens again.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn info(img: &Path) -> serde_json::Value {
    let o = Command::new("qemu-img")
        .args(["info", "--output=json", s(img)])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap()
}

/// web01/: web01.vmx naming web01.vmdk (monolithicSparse) and web01_1-000001.vmdk (a
/// delta over web01_1.vmdk), with an nvram, a vmsd, a lock folder, a log and swap.
fn vm_folder(env: &Env) -> PathBuf {
    let dir = env.path("web01");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = env.path("os.raw");
    for (disk, size, seed) in [("web01.vmdk", 96 * MIB, 3), ("web01_1.vmdk", 64 * MIB, 4)] {
        make_mixed_image(&raw, size, seed);
        let sparse = ["-o", "subformat=monolithicSparse"];
        convert_raw(&raw, "vmdk", &sparse, &dir.join(disk));
    }
    std::fs::remove_file(&raw).unwrap();
    create_overlay(&dir, "vmdk", "web01_1.vmdk", "web01_1-000001.vmdk");
    for cmd in ["write -P 0x5a 1M 64k", "write -P 0x5b 33M 3M"] {
        sh(
            "qemu-io",
            &["-f", "vmdk", "-c", cmd, s(&dir.join("web01_1-000001.vmdk"))],
        );
    }
    std::fs::write(
        dir.join("web01.vmx"),
        "config.version = \"8\"\nvirtualHW.version = \"19\"\ndisplayName = \"web01\"\n\
         nvram = \"web01.nvram\"\nscsi0.present = \"TRUE\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"web01.vmdk\"\n\
         scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"web01_1-000001.vmdk\"\n\
         ide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"/iso/install.iso\"\n",
    )
    .unwrap();
    let mut nvram = vec![0u8; 8684];
    noise(&mut nvram, 9);
    std::fs::write(dir.join("web01.nvram"), &nvram).unwrap();
    std::fs::write(dir.join("web01.vmsd"), ".encoding = \"UTF-8\"\n").unwrap();
    std::fs::create_dir_all(dir.join("web01.vmx.lck")).unwrap();
    std::fs::write(dir.join("web01.vmx.lck/M12345.lck"), "lock").unwrap();
    std::fs::write(dir.join("vmware.log"), "log line\n").unwrap();
    let swap = std::fs::File::create(dir.join("web01-1a2b.vswp")).unwrap();
    swap.set_len(32 * MIB).unwrap();
    dir
}

fn restore_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    a.push("--json");
    serde_json::from_str(&env.ok(&a)).unwrap()
}

#[test]
fn vm_folder_backs_up_and_restores_as_a_folder_the_hypervisor_opens() {
    let env = Env::new();
    env.init(&[]);
    let dir = vm_folder(&env);
    let r = env.backup("web01", &[&dir], &[]);
    assert_eq!(r["disks"], 2, "{r}");
    assert_eq!(r["files"], 2 + 1, "vmx, nvram, vmsd: {r}");
    let skipped: Vec<String> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let p = PathBuf::from(x["path"].as_str().unwrap());
            p.file_name().unwrap().to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        skipped,
        ["vmware.log", "web01-1a2b.vswp", "web01.vmx.lck"],
        "{r}"
    );
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let disks: Vec<(&str, &str)> = snaps[0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["format"].as_str().unwrap()))
        .collect();
    assert_eq!(
        disks,
        [("web01.vmdk", "vmdk"), ("web01_1-000001.vmdk", "vmdk")]
    );

    // Native restore elsewhere: the same folder, minus lock, log and swap.
    let out = env.path("restored");
    let rr = restore_json(&env, &["web01:latest", "--target", s(&out)]);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "web01.nvram",
            "web01.vmdk",
            "web01.vmsd",
            "web01.vmx",
            "web01_1-000001.vmdk"
        ],
        "{rr}"
    );
    for f in ["web01.vmx", "web01.nvram", "web01.vmsd"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(dir.join(f)).unwrap(),
            "{f} is not byte-exact"
        );
    }
    for (disk, size) in [("web01.vmdk", 96 * MIB), ("web01_1-000001.vmdk", 64 * MIB)] {
        let restored = out.join(disk);
        let i = info(&restored);
        assert_eq!(i["format"], "vmdk", "{i}");
        assert_eq!(i["virtual-size"].as_u64(), Some(size), "{i}");
        assert!(
            i.get("backing-filename").is_none(),
            "delta not flattened: {i}"
        );
        qemu_img(&["check", "-q", "-f", "vmdk", s(&restored)]);
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "vmdk",
            s(&restored),
            "-F",
            "vmdk",
            s(&dir.join(disk)),
        ]);
    }
    // Holes stay holes: the 96 MiB disk holds about 12 MiB of data.
    assert!(allocated(&out.join("web01.vmdk")) < 24 * MIB);

    // The same folder again: refused without a terminal, kept, then overwritten.
    let o = env.run(&["restore", "web01:latest", "--target", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("exists") && e.contains("--existing overwrite"),
        "{e}"
    );
    let kept = restore_json(
        &env,
        &["web01:latest", "--target", s(&out), "--existing", "keep"],
    );
    assert_eq!(kept["kept"].as_array().unwrap().len(), 5, "{kept}");
    std::fs::remove_file(out.join("web01.nvram")).unwrap();
    let again = restore_json(
        &env,
        &["web01:latest", "--target", s(&out), "--existing", "keep"],
    );
    assert_eq!(again["files"][0]["name"], "web01.nvram", "{again}");
    assert_eq!(
        std::fs::read(out.join("web01.nvram")).unwrap(),
        std::fs::read(dir.join("web01.nvram")).unwrap()
    );
    restore_json(
        &env,
        &[
            "web01:latest",
            "--target",
            s(&out),
            "--existing",
            "overwrite",
        ],
    );

    // --format raw: byte-identical to qemu's reading of each disk.
    let raw_out = env.path("raw");
    let rr = restore_json(
        &env,
        &["web01:latest", "--target", s(&raw_out), "--format", "raw"],
    );
    for d in rr["disks"].as_array().unwrap() {
        let src = dir.join(d["name"].as_str().unwrap());
        let reference = env.path("reference.raw");
        qemu_raw("vmdk", &src, &reference);
        let got = PathBuf::from(d["path"].as_str().unwrap());
        assert!(s(&got).ends_with(".raw"), "{d}");
        assert_eq!(sha256(&got), sha256(&reference), "{d}");
        std::fs::remove_file(&reference).unwrap();
    }

    // One disk's raw content into a file of the user's choosing.
    let one = env.path("disk1-content.bin");
    restore_json(
        &env,
        &[
            "web01:latest",
            "--disk",
            "web01_1-000001.vmdk",
            "--target",
            s(&one),
        ],
    );
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "raw",
        s(&one),
        "-F",
        "vmdk",
        s(&dir.join("web01_1-000001.vmdk")),
    ]);
    env.ok(&["check", "--read-data"]);
}

/// A folder without a .vmx: every disk image that is not a piece of another (here a
/// qcow2 overlay over its backing file) plus the small files; qcow2 comes back as qcow2.
#[test]
fn folder_without_vmx_takes_chain_tops_and_restores_qcow2() {
    let env = Env::new();
    env.init(&[]);
    let dir = env.path("vm2");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = env.path("base.raw");
    make_mixed_image(&raw, 80 * MIB, 5);
    convert_raw(&raw, "qcow2", &[], &dir.join("base.qcow2"));
    create_overlay(&dir, "qcow2", "base.qcow2", "top.qcow2");
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 5M 1M",
            s(&dir.join("top.qcow2")),
        ],
    );
    std::fs::write(dir.join("vm.conf"), "memory: 2048\nscsi0: top.qcow2\n").unwrap();
    let r = env.backup("vm2", &[&dir], &[]);
    assert_eq!(
        (r["disks"].as_u64(), r["files"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    let out = env.path("out");
    let rr = restore_json(&env, &["vm2:latest", "--target", s(&out)]);
    assert_eq!(rr["disks"][0]["format"], "qcow2", "{rr}");
    let top = out.join("top.qcow2");
    qemu_img(&["check", "-q", "-f", "qcow2", s(&top)]);
    let i = info(&top);
    assert!(i.get("backing-filename").is_none(), "{i}");
    assert_eq!(i["virtual-size"].as_u64(), Some(80 * MIB));
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        s(&top),
        "-F",
        "qcow2",
        s(&dir.join("top.qcow2")),
    ]);
    assert_eq!(
        std::fs::read(out.join("vm.conf")).unwrap(),
        std::fs::read(dir.join("vm.conf")).unwrap()
    );
}

/// A .vmx naming a disk that is not there is refused before anything is stored.
#[test]
fn vmx_naming_a_missing_disk_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let dir = vm_folder(&env);
    std::fs::remove_file(dir.join("web01.vmdk")).unwrap();
    let o = env.run(&["backup", "--vm", "web01", s(&dir)]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("web01.vmx") && e.contains("web01.vmdk"), "{e}");
    assert!(
        !env.repo.join("data").exists(),
        "a refused backup stored data"
    );
    assert_eq!(
        std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count()),
        0
    );
}

/// `--disk NAME --target DEVICE` writes the raw disk onto a block device, holes as zeros
/// over whatever the device held. Needs loop devices (root); says so when it cannot run.
#[test]
fn single_disk_restore_onto_a_block_device() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("disk.img");
    make_mixed_image(&img, 64 * MIB, 6);
    env.backup("dev", &[&img], &[]);
    // A backing file full of 0xee stands in for a used disk.
    let backing = env.path("device-backing");
    std::fs::write(&backing, vec![0xeeu8; 64 * MIB as usize]).unwrap();
    let o = Command::new("losetup")
        .args(["--find", "--show", s(&backing)])
        .output();
    let Some(dev) = o
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        eprintln!("SKIPPED: no loop device available (needs root and /dev/loop-control)");
        return;
    };
    let refused = env.run(&[
        "restore",
        "dev:latest",
        "--disk",
        "disk.img",
        "--target",
        &dev,
    ]);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(
            refused.status.code(),
            Some(2),
            "a device is always 'existing'"
        );
        env.ok(&[
            "restore",
            "dev:latest",
            "--disk",
            "disk.img",
            "--target",
            &dev,
            "--existing",
            "overwrite",
        ]);
    }));
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
    assert_eq!(sha256(&backing), sha256(&img));
}
