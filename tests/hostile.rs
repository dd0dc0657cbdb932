//! The guest owns every byte of its disk, and whoever can write to the share owns every
//! byte of an unencrypted repository: neither may steer a backup or a restore.

mod common;
use common::*;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 64 MiB raw guest disk full of the guest's own (random) data.
fn guest_disk(env: &Env, name: &str) -> std::path::PathBuf {
    let img = env.path(name);
    make_random_image(&img, 64 * MIB, 64 * MIB, 11);
    img
}

/// Writes `data` into `img` at `offset`, as a guest writing its own disk would.
fn write_at(img: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(data, offset).unwrap();
}

fn restore_disk(env: &Env, snap: &str, disk: &str) -> std::path::PathBuf {
    let out = env.path(&format!("restored-{disk}"));
    env.ok(&[
        "restore",
        snap,
        "--disk",
        disk,
        "--target",
        s(&out),
        "--existing",
        "overwrite",
    ]);
    out
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// qemu's old format-probing hole: a guest writes a qcow2 header naming a host file as its
/// backing file into sector 0 of its raw disk. cairn must back up the guest's 64 MiB as
/// raw, with a warning, and never read the host file.
#[test]
fn a_qcow2_header_inside_a_raw_disk_is_data() {
    let env = Env::new();
    env.init(&[]);
    let secret = env.path("host-secret.raw");
    make_random_image(&secret, 8 * MIB, 8 * MIB, 99);
    let evil = env.path("evil.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&secret),
        "-F",
        "raw",
        s(&evil),
        "64M",
    ]);
    let img = guest_disk(&env, "guest.img");
    write_at(&img, 0, &std::fs::read(&evil).unwrap());
    let o = env.run(&["backup", "--json", "--vm", "v", s(&img)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("looks like a qcow2"), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["bytes_read"], 64 * MIB, "{r}");
    assert_eq!(r["items"][0]["format"], "raw", "{r}");
    assert_eq!(r["items"][0]["format_source"], "raw-by-name", "{r}");
    assert_eq!(r["items"][0]["follows"], serde_json::json!([]), "{r}");
    let out = restore_disk(&env, "v:latest", "guest.img");
    assert_eq!(sha256(&out), sha256(&img));
}

/// A VMDK descriptor naming /etc/passwd as a flat extent, and a fixed-VHD footer in the
/// last sector (which would shrink the disk to 1 MiB), are guest data too.
#[test]
fn a_vmdk_descriptor_or_vhd_footer_inside_a_raw_disk_is_data() {
    let env = Env::new();
    env.init(&[]);
    let img = guest_disk(&env, "guest.img");
    write_at(
        &img,
        0,
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
          createType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n\0",
    );
    let vhd = env.path("tiny.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        s(&vhd),
        "1M",
    ]);
    let v = std::fs::read(&vhd).unwrap();
    let img2 = guest_disk(&env, "guest2.raw");
    write_at(&img2, 64 * MIB - 512, &v[v.len() - 512..]);
    for (disk, what) in [(&img, "vmdk"), (&img2, "vhd")] {
        let o = env.run(&["backup", "--json", "--vm", "v", s(disk)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("looks like a {what}")),
            "{}",
            stderr(&o)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["logical_bytes"], 64 * MIB, "{r}");
        let name = disk.file_name().unwrap().to_str().unwrap();
        let out = restore_disk(&env, "v:latest", name);
        assert_eq!(sha256(&out), sha256(disk), "{what}");
    }
}

/// A name that says nothing, with content that looks like a format, is refused with the
/// `--format` to pass; with it, the backup runs.
#[test]
fn an_unnamed_format_must_be_given() {
    let env = Env::new();
    env.init(&[]);
    let raw = env.path("src.raw");
    make_mixed_image(&raw, 64 * MIB, 3);
    let disk = env.path("disk0");
    convert_raw(&raw, "qcow2", &[], &disk);
    let o = env.run(&["backup", "--vm", "v", s(&disk)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--format disk0=qcow2"),
        "{}",
        stderr(&o)
    );
    let r = env.backup("v", &[&disk], &["--format", "disk0=qcow2"]);
    assert_eq!(r["items"][0]["format_source"], "given", "{r}");
    let out = restore_disk(&env, "v:latest", "disk0");
    let want = env.path("want.raw");
    qemu_raw("qcow2", &disk, &want);
    assert_eq!(sha256(&out), sha256(&want));
    // A name that promises a format the content does not have is refused too.
    let liar = env.path("liar.qcow2");
    std::fs::copy(&raw, &liar).unwrap();
    let o = env.run(&["backup", "--vm", "v", s(&liar)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("liar.qcow2=raw"), "{}", stderr(&o));
}

/// Backing files are followed only inside the folder of the image naming them, unless
/// `--allow-backing-outside`; what was followed is reported.
#[test]
fn backing_files_stay_inside_the_folder() {
    let env = Env::new();
    env.init(&[]);
    let shared = env.path("shared");
    let vm = env.path("vm");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&vm).unwrap();
    let raw = env.path("base.raw");
    make_mixed_image(&raw, 64 * MIB, 4);
    convert_raw(&raw, "qcow2", &[], &shared.join("base.qcow2"));
    create_overlay(&vm, "qcow2", "../shared/base.qcow2", "top.qcow2");
    let top = vm.join("top.qcow2");
    let o = env.run(&["backup", "--vm", "v", s(&top)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside its folder") && stderr(&o).contains("--allow-backing-outside"),
        "{}",
        stderr(&o)
    );
    let r = env.backup("v", &[&top], &["--allow-backing-outside"]);
    let follows = r["items"][0]["follows"].as_array().unwrap();
    assert!(
        follows
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("base.qcow2")),
        "{r}"
    );
    let out = restore_disk(&env, "v:latest", "top.qcow2");
    let want = env.path("want.raw");
    qemu_raw("qcow2", &top, &want);
    assert_eq!(sha256(&out), sha256(&want));
}

/// A VM folder whose descriptor's first line is not exactly `# Disk DescriptorFile` (qemu
/// still opens it) is backed up as the 128 MiB disk it describes, with its flat extent; a
/// .vmx naming a file that is no disk fails the backup.
#[test]
fn a_disk_the_vmx_names_is_a_disk() {
    let env = Env::new();
    env.init(&[]);
    let dir = env.path("web");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = env.path("src.raw");
    make_mixed_image(&raw, 128 * MIB, 6);
    convert_raw(
        &raw,
        "vmdk",
        &["-o", "subformat=monolithicFlat"],
        &dir.join("web.vmdk"),
    );
    let desc = std::fs::read_to_string(dir.join("web.vmdk")).unwrap();
    let odd = desc.replacen(
        "# Disk DescriptorFile",
        "# Disk Descriptor File (edited)",
        1,
    );
    assert_ne!(odd, desc);
    std::fs::write(dir.join("web.vmdk"), odd).unwrap();
    // qemu opens it as the 128 MiB disk: so must cairn.
    let want = env.path("want.raw");
    qemu_raw("vmdk", &dir.join("web.vmdk"), &want);
    assert_eq!(std::fs::metadata(&want).unwrap().len(), 128 * MIB);
    std::fs::write(
        dir.join("web.vmx"),
        "displayName = \"web\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"web.vmdk\"\n",
    )
    .unwrap();
    let r = env.backup("web", &[&dir], &[]);
    assert_eq!(r["logical_bytes"], 128 * MIB, "{r}");
    assert_eq!(r["items"][0]["format_source"], "config", "{r}");
    assert!(
        !r["skipped"].to_string().contains("flat"),
        "the flat extent belongs to the disk: {r}"
    );
    let out = restore_disk(&env, "web:latest", "web.vmdk");
    assert_eq!(sha256(&out), sha256(&want));

    std::fs::write(dir.join("web.vmdk"), "this is not a disk\n").unwrap();
    let o = env.run(&["backup", "--vm", "web", s(&dir)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot be read as a VMDK"),
        "{}",
        stderr(&o)
    );
}

fn vmx_file_names(vmx: &Path) -> Vec<String> {
    std::fs::read_to_string(vmx)
        .unwrap()
        .lines()
        .filter(|l| l.contains(".fileName"))
        .map(|l| l.split('"').nth(1).unwrap().to_string())
        .collect()
}

/// A .vmx naming disks outside its folder (`../shared/data.vmdk`, an absolute path, two
/// datastores each with a `data.vmdk`): every disk is stored under a distinct name, and
/// the restored .vmx names the restored disks, not the originals (unless --keep-config).
#[test]
fn a_restored_vm_opens_its_restored_disks() {
    let env = Env::new();
    env.init(&[]);
    let dir = env.path("app");
    let (ds1, ds2) = (env.path("ds1"), env.path("ds2"));
    for d in [&dir, &ds1, &ds2] {
        std::fs::create_dir_all(d).unwrap();
    }
    let raw = env.path("src.raw");
    for (i, target) in [
        dir.join("app.vmdk"),
        ds1.join("data.vmdk"),
        ds2.join("data.vmdk"),
    ]
    .iter()
    .enumerate()
    {
        make_mixed_image(&raw, 64 * MIB, 20 + i as u64);
        convert_raw(&raw, "vmdk", &["-o", "subformat=monolithicSparse"], target);
    }
    let vmx = format!(
        "displayName = \"app\"\nscsi0:0.fileName = \"app.vmdk\"\n\
         scsi0:1.fileName = \"../ds1/data.vmdk\"\nscsi0:2.fileName = \"{}\"\n",
        ds2.join("data.vmdk").display()
    );
    std::fs::write(dir.join("app.vmx"), &vmx).unwrap();
    let o = env.run(&["backup", "--json", "--vm", "app", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stored as data_2.vmdk"),
        "{}",
        stderr(&o)
    );

    let out = env.path("out");
    let rr: serde_json::Value =
        serde_json::from_str(&env.ok(&["restore", "app:latest", "--target", s(&out), "--json"]))
            .unwrap();
    assert_eq!(rr["config_rewritten"].as_array().unwrap().len(), 2, "{rr}");
    assert_eq!(
        vmx_file_names(&out.join("app.vmx")),
        ["app.vmdk", "data.vmdk", "data_2.vmdk"]
    );
    for (name, src) in [
        ("data.vmdk", ds1.join("data.vmdk")),
        ("data_2.vmdk", ds2.join("data.vmdk")),
    ] {
        qemu_img(&["compare", "-q", s(&out.join(name)), s(&src)]);
    }
    let out2 = env.path("out2");
    env.ok(&[
        "restore",
        "app:latest",
        "--target",
        s(&out2),
        "--keep-config",
    ]);
    assert_eq!(std::fs::read_to_string(out2.join("app.vmx")).unwrap(), vmx);
}

/// An empty 16 TiB qcow2 and an empty 1 TiB sparse raw file back up at the cost of
/// their metadata: nothing is read, and the restore is all holes.
#[test]
fn holes_cost_nothing() {
    let env = Env::new();
    env.init(&[]);
    let q = env.path("huge.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&q), "16T"]);
    let raw = env.path("huge.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let r = env.backup("empty", &[&q, &raw], &[]);
    assert_eq!(r["bytes_read"], 0, "{r}");
    assert_eq!(r["holes_skipped"], (16u64 << 40) + (1u64 << 40), "{r}");
    let out = restore_disk(&env, "empty:latest", "huge.raw");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 40);
    assert_eq!(allocated(&out), 0);
}

/// In an unencrypted repository anyone with write access can plant a snapshot: names
/// from it that would escape the restore target are refused by check and restore.
#[test]
fn planted_names_never_escape_the_target() {
    let env = Env::new();
    env.init(&["--encryption", "none"]);
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    make_random_image(&img, 4 * MIB, MIB, 5);
    std::fs::write(dir.join("vm.conf"), "x").unwrap();
    env.backup("vm", &[&dir], &[]);
    let repo = cairn::repo::Repository::open(&env.url, &|| Ok(String::new())).unwrap();
    let (_, mut snap) = cairn::snapshot::resolve(&repo, "vm:latest").unwrap();
    for bad in ["../escaped", "/tmp/cairn-escaped-abs"] {
        snap.files[0].name = cairn::snapshot::Name::new(bad);
        snap.time = "2030-01-01T00:00:00+00:00".into();
        let id = cairn::snapshot::save(&repo, &snap).unwrap();
        let o = env.run(&["check"]);
        assert_eq!(o.status.code(), Some(1), "check passed a planted name");
        assert!(
            stderr(&o).contains("not a safe file name"),
            "{}",
            stderr(&o)
        );
        let out = env.path("out");
        let o = env.run(&["restore", &id.to_hex()[..12], "--target", s(&out)]);
        assert_ne!(o.status.code(), Some(0));
        assert!(
            stderr(&o).contains("not a safe file name"),
            "{}",
            stderr(&o)
        );
        assert!(!env.path("escaped").exists());
        assert!(!Path::new("/tmp/cairn-escaped-abs").exists());
        assert!(!out.exists(), "nothing may be written");
        env.ok(&["forget", &id.to_hex()[..12]]);
    }
}

/// A config file with a 250-byte name and one whose name is not UTF-8 come back under
/// exactly their names.
#[test]
fn long_and_non_utf8_names_round_trip() {
    let env = Env::new();
    env.init(&[]);
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    make_random_image(&dir.join("disk.img"), 4 * MIB, MIB, 8);
    let long = "n".repeat(246) + ".cfg";
    assert_eq!(long.len(), 250);
    std::fs::write(dir.join(&long), "long").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.nvram");
    std::fs::write(dir.join(odd), "latin-1 name").unwrap();
    env.backup("vm", &[&dir], &[]);
    let out = env.path("out");
    env.ok(&["restore", "vm:latest", "--target", s(&out)]);
    assert_eq!(std::fs::read_to_string(out.join(&long)).unwrap(), "long");
    assert_eq!(
        std::fs::read_to_string(out.join(odd)).unwrap(),
        "latin-1 name"
    );
}

/// Key-file KDF parameters are bounded: a planted `m_cost` of 4294967295 or a huge
/// `t_cost` is refused at once with a message, not a 4 TiB allocation or minutes of work.
#[test]
fn kdf_parameters_are_bounded() {
    for (field, value) in [("m_cost", "4294967295"), ("t_cost", "4000000")] {
        let env = Env::new();
        env.init(&[]);
        let keys: Vec<_> = std::fs::read_dir(env.repo.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let text = std::fs::read_to_string(&keys[0]).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["kdf_params"][field] = value.parse::<u64>().unwrap().into();
        std::fs::write(&keys[0], v.to_string()).unwrap();
        let started = std::time::Instant::now();
        let o = env.run(&["snapshots"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(field) && stderr(&o).contains("refused"),
            "{}",
            stderr(&o)
        );
        // Not a timing assertion on cairn's speed: a refusal does no KDF work at all.
        assert!(started.elapsed().as_secs() < 30);
    }
}

/// An encrypted repository with an empty password is refused unless asked for.
#[test]
fn empty_passwords_are_refused() {
    let mut env = Env::new();
    env.password = String::new();
    let o = env.run(&["init"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--insecure-no-password"),
        "{}",
        stderr(&o)
    );
    assert!(!env.repo.join("config").exists());
    env.ok(&["init", "--insecure-no-password"]);
    env.ok(&["snapshots"]);
}

/// Odd inputs that once passed: an empty VM name, a folder without disks.
#[test]
fn empty_vm_names_and_diskless_folders_are_refused() {
    let env = Env::new();
    env.init(&[]);
    let img = env.path("d.img");
    make_random_image(&img, MIB, MIB, 1);
    let o = env.run(&["backup", "--vm", "", s(&img)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let dir = env.path("empty-vm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "no disks here").unwrap();
    let o = env.run(&["backup", "--vm", "x", s(&dir)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds no disk images"),
        "{}",
        stderr(&o)
    );
    let out = Command::new(BIN).args(["init", "--help"]).output().unwrap();
    assert!(out.status.success());
}
