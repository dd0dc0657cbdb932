//! What to back up of a VM: disk images given one by one, or a VM folder as the hypervisor
//! left it (the VMware Consolidated Backup way).
//!
//! In a folder, the disks are those the `.vmx` names (each read through its delta chain as
//! the guest sees it), or, without a `.vmx`, every disk image that is not a piece of
//! another (an extent, a parent, a backing file). Lock files, swap and VMware logs are
//! skipped, and said so. Every other file up to [`CONFIG_MAX`] is the VM's configuration
//! (`.vmx`, `.vmxf`, `.nvram`, `.vmsd`, …), stored whole so restore gives it back byte for
//! byte. Larger files that are not disks (suspend memory, core dumps) are skipped.

use crate::image::{self, DiskImage, Format, Source};
use crate::snapshot::Name;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Largest file stored as configuration; bigger non-disk files are skipped.
pub const CONFIG_MAX: u64 = 64 << 20;

/// The format recorded for config files.
pub const FILE_FORMAT: &str = "file";

/// A disk or config file to back up, under the name it is restored as.
pub struct Item {
    pub name: Name,
    pub path: PathBuf,
    /// The source format recorded in the manifest: the image's, or "file" for config.
    pub format: &'static str,
    pub image: std::sync::Arc<dyn DiskImage>,
    /// How the `.vmx` named this disk (its `fileName` value), if it did.
    pub config_ref: Option<Name>,
    /// Who decided the disk's format (None for config files).
    pub format_source: Option<Source>,
}

/// A file of a VM folder that is not backed up, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    #[serde(serialize_with = "crate::report::path")]
    pub path: PathBuf,
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Inventory {
    pub disks: Vec<Item>,
    pub files: Vec<Item>,
    pub skipped: Vec<Skipped>,
    /// Things the user should know: a disk stored under another name, content that
    /// looked like another format.
    pub warnings: Vec<String>,
}

/// How to open the sources: `--format` and `--allow-backing-outside`.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// `--format FMT`: every disk given on the command line.
    pub format: Option<Format>,
    /// `--format NAME=FMT`: the disk whose file name (or path as given) is NAME.
    pub per_disk: Vec<(String, Format)>,
    pub allow_backing_outside: bool,
}

impl SourceOptions {
    fn format_for(&self, p: &Path) -> Option<Format> {
        let name = p.file_name().map(|n| n.to_string_lossy());
        self.per_disk
            .iter()
            .find(|(k, _)| Some(k.as_str()) == name.as_deref() || Path::new(k) == p)
            .map(|(_, f)| *f)
            .or(self.format)
    }
}

/// Sorts the command line's paths into disks, config files and skipped files. Names are
/// made unique (two disks called `data.vmdk` on two datastores are one VM's normal case),
/// since restore writes them all into one folder.
pub fn inventory(paths: &[PathBuf], opts: &SourceOptions) -> Result<Inventory> {
    if paths.is_empty() {
        return Err(Error::Usage("no disk images or VM folders given".into()));
    }
    let mut inv = Inventory::default();
    for p in paths {
        if p.is_dir() {
            scan_folder(p, opts, &mut inv)?;
        } else {
            let d = open_disk(p, opts, None)?;
            inv.disks.push(d.0);
            inv.warnings.extend(d.1);
        }
    }
    for (k, _) in &opts.per_disk {
        let hit = inv.disks.iter().any(|d| {
            d.path.file_name().map(|n| n.to_string_lossy()).as_deref() == Some(k.as_str())
                || Path::new(k) == d.path
        });
        if !hit {
            return Err(Error::Usage(format!(
                "--format {k}=… names no disk of this backup"
            )));
        }
    }
    let mut taken: HashSet<Name> = inv.files.iter().map(|f| f.name.clone()).collect();
    for d in &mut inv.disks {
        if taken.insert(d.name.clone()) {
            continue;
        }
        let new = unique_name(&d.name, &taken);
        inv.warnings.push(format!(
            "{} is stored as {new}: another disk of this VM is also named {}",
            d.path.display(),
            d.name
        ));
        d.name = new.clone();
        taken.insert(new);
    }
    Ok(inv)
}

/// `data.vmdk` → `data_2.vmdk`, `data_3.vmdk`, …: the first that no other item has.
fn unique_name(name: &Name, taken: &HashSet<Name>) -> Name {
    let b = name.as_bytes();
    let dot = b.iter().rposition(|&c| c == b'.').filter(|&i| i > 0);
    let (stem, ext) = dot.map_or((b, &b""[..]), |i| b.split_at(i));
    (2u32..)
        .map(|n| {
            let mut v = stem.to_vec();
            v.extend_from_slice(format!("_{n}").as_bytes());
            v.extend_from_slice(ext);
            Name::new(v)
        })
        .find(|n| !taken.contains(n) && n.problem().is_none())
        .unwrap_or_else(|| name.clone())
}

fn file_name(p: &Path) -> Result<Name> {
    let n = p
        .file_name()
        .map(Name::from_os)
        .ok_or_else(|| Error::Usage(format!("{} has no file name", p.display())))?;
    if let Some(why) = n.problem() {
        return Err(Error::Usage(format!(
            "{} cannot be backed up under its name: {why}",
            p.display()
        )));
    }
    Ok(n)
}

/// Opens one disk; `config_ref` is the `.vmx` value naming it, which also says that the
/// hypervisor treats it as a disk.
fn open_disk(
    p: &Path,
    opts: &SourceOptions,
    config_ref: Option<Name>,
) -> Result<(Item, Option<String>)> {
    let o = image::open_disk(
        p,
        opts.format_for(p),
        config_ref.is_some(),
        opts.allow_backing_outside,
    )?;
    Ok((
        Item {
            name: file_name(p)?,
            format: o.image.format(),
            image: o.image.into(),
            path: p.to_path_buf(),
            config_ref,
            format_source: Some(o.source),
        },
        o.warning,
    ))
}

/// Why a folder entry is never backed up, by its name; None if it may be.
fn skip_reason(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".lck") {
        Some("lock file")
    } else if lower.ends_with(".vswp") {
        Some("swap file")
    } else if lower.starts_with("vmware") && lower.ends_with(".log") {
        Some("log file")
    } else {
        None
    }
}

/// True for files that hold a disk image by their name; raw images have no magic to
/// recognise, so `.img` / `.raw` names are what marks them.
fn named_like_disk(p: &Path) -> bool {
    let lower = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    [".vmdk", ".qcow2", ".img", ".raw", ".vhd", ".vhdx"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn scan_folder(dir: &Path, opts: &SourceOptions, inv: &mut Inventory) -> Result<()> {
    let read = |e| Error::io(format!("listing VM folder {}", dir.display()), e);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(read)?;
    entries.sort();

    let mut rest = Vec::new();
    for p in entries {
        let name = file_name(&p)?;
        if let Some(reason) = skip_reason(&name.lossy()) {
            inv.skipped.push(Skipped { path: p, reason });
        } else if !p.is_file() {
            inv.skipped.push(Skipped {
                path: p,
                reason: "not a regular file",
            });
        } else {
            rest.push(p);
        }
    }

    // Disks: what the .vmx names, else every disk image that no other one is made of.
    let vmx: Vec<&PathBuf> = rest
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("vmx")))
        .collect();
    let named = match vmx.as_slice() {
        [] => None,
        [one] => Some(disks_named_by(one)?),
        _ => {
            return Err(Error::Usage(format!(
                "VM folder {} holds {} .vmx files; back up one VM at a time",
                dir.display(),
                vmx.len()
            )))
        }
    };
    let mut disks: Vec<Item> = Vec::new();
    match &named {
        Some(names) => {
            for n in names {
                let p = dir.join(std::ffi::OsStr::from_bytes(n.as_bytes()));
                if !p.is_file() {
                    return Err(Error::Usage(format!(
                        "{} names disk {}, which does not exist; nothing was backed up",
                        vmx[0].display(),
                        p.display()
                    )));
                }
                let (d, w) = open_disk(&p, opts, Some(n.clone()))?;
                disks.push(d);
                inv.warnings.extend(w);
            }
        }
        None => {
            for p in rest.iter().filter(|p| named_like_disk(p)) {
                let (d, w) = open_disk(p, opts, None)?;
                disks.push(d);
                inv.warnings.extend(w);
            }
        }
    }
    // A disk that is a piece of another (a delta's parent, an extent) is not a disk of its
    // own; the pieces of every disk belong to it, not to the folder's config.
    let inner: HashSet<PathBuf> = disks
        .iter()
        .flat_map(|d| {
            let me = canonical(&d.path);
            d.image
                .files()
                .into_iter()
                .map(|f| canonical(&f))
                .filter(move |f| *f != me)
        })
        .collect();
    disks.retain(|d| !inner.contains(&canonical(&d.path)));
    let taken: HashSet<PathBuf> = disks
        .iter()
        .flat_map(|d| d.image.files())
        .map(|f| canonical(&f))
        .collect();

    for p in rest {
        if taken.contains(&canonical(&p)) {
            continue;
        }
        let name = file_name(&p)?;
        let len = std::fs::metadata(&p)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
            .len();
        if named.is_some() && named_like_disk(&p) && image::open(&p).is_ok() {
            inv.skipped.push(Skipped {
                path: p,
                reason: "a disk image the .vmx does not name",
            });
        } else if len > CONFIG_MAX {
            inv.skipped.push(Skipped {
                path: p,
                reason: "larger than 64 MiB and not a disk (memory or dump file?)",
            });
        } else {
            inv.files.push(Item {
                name,
                format: FILE_FORMAT,
                image: std::sync::Arc::new(image::RawImage::open(&p)?),
                path: p,
                config_ref: None,
                format_source: None,
            });
        }
    }
    if disks.is_empty() {
        return Err(Error::Usage(format!(
            "VM folder {} holds no disk images (no .vmx naming one, no file named like one); nothing was backed up",
            dir.display()
        )));
    }
    inv.disks.extend(disks);
    Ok(())
}

/// One `key = "value"` line of a `.vmx`: the key lower-cased, and where its value lies in
/// the file's bytes (inside the quotes), so a restore can rewrite just the value.
struct VmxEntry {
    key: String,
    value: std::ops::Range<usize>,
}

/// The entries of a `.vmx`, read as bytes: file names are kept exactly as written.
fn vmx_entries(text: &[u8]) -> Vec<VmxEntry> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split(|&b| b == b'\n') {
        let base = start;
        start += line.len() + 1;
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = String::from_utf8_lossy(&line[..eq])
            .trim()
            .to_ascii_lowercase();
        let rest = &line[eq + 1..];
        let lead = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let body = &rest[lead..];
        let at = base + eq + 1 + lead;
        let value = if body.first() == Some(&b'"') {
            let len = body[1..]
                .iter()
                .position(|&b| b == b'"')
                .unwrap_or(body.len() - 1);
            at + 1..at + 1 + len
        } else {
            let len = body.len()
                - body
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            at..at + len
        };
        out.push(VmxEntry { key, value });
    }
    out
}

/// The disk files a `.vmx` names (`scsi0:0.fileName = "web01.vmdk"`), leaving out CD-ROM
/// and floppy images.
fn disks_named_by(vmx: &Path) -> Result<Vec<Name>> {
    let text =
        std::fs::read(vmx).map_err(|e| Error::io(format!("reading {}", vmx.display()), e))?;
    let entries = vmx_entries(&text);
    let values: BTreeMap<&str, &[u8]> = entries
        .iter()
        .map(|e| (e.key.as_str(), &text[e.value.clone()]))
        .collect();
    let lower = |v: &[u8]| String::from_utf8_lossy(v).to_ascii_lowercase();
    let mut out = Vec::new();
    for (k, v) in &values {
        let Some(dev) = k.strip_suffix(".filename") else {
            continue;
        };
        let kind = values
            .get(format!("{dev}.devicetype").as_str())
            .map(|v| lower(v));
        let present = values
            .get(format!("{dev}.present").as_str())
            .map(|v| lower(v));
        if present.is_some_and(|p| p == "false")
            || kind
                .is_some_and(|t| t.contains("cdrom") || t.contains("floppy") || t.contains("atapi"))
            || !lower(v).ends_with(".vmdk")
        {
            continue;
        }
        out.push(Name::new(*v));
    }
    Ok(out)
}

/// One disk path changed in a restored `.vmx`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rewritten {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// Points the `fileName` entries of a `.vmx` at the restored disks: `map` pairs each
/// disk's `config_ref` (the path the config gave) with the name it was restored under.
/// Entries already naming the restored file are left as they are.
pub fn rewrite_vmx(text: &[u8], map: &[(Name, Name)]) -> (Vec<u8>, Vec<Rewritten>) {
    let mut out = Vec::with_capacity(text.len());
    let mut changes = Vec::new();
    let mut pos = 0;
    for e in vmx_entries(text) {
        if !e.key.ends_with(".filename") {
            continue;
        }
        let v = &text[e.value.clone()];
        let Some((_, to)) = map
            .iter()
            .find(|(from, to)| from.as_bytes() == v && to.as_bytes() != v)
        else {
            continue;
        };
        out.extend_from_slice(&text[pos..e.value.start]);
        out.extend_from_slice(to.as_bytes());
        pos = e.value.end;
        changes.push(Rewritten {
            key: e.key.clone(),
            from: String::from_utf8_lossy(v).into_owned(),
            to: to.to_string(),
        });
    }
    out.extend_from_slice(&text[pos..]);
    (out, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_locks_swap_and_logs_only() {
        assert_eq!(skip_reason("web01.vmx.lck"), Some("lock file"));
        assert_eq!(skip_reason("web01-7f3a.vswp"), Some("swap file"));
        assert_eq!(skip_reason("vmware-2.log"), Some("log file"));
        assert_eq!(skip_reason("vmware.log"), Some("log file"));
        assert_eq!(skip_reason("web01.vmx"), None);
        assert_eq!(skip_reason("web01.nvram"), None);
        assert_eq!(skip_reason("notes.log"), None);
    }

    #[test]
    fn vmx_names_disks_but_not_cdroms() {
        let dir = std::env::temp_dir().join(format!("cairn-vmx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vmx = dir.join("web01.vmx");
        std::fs::write(
            &vmx,
            "displayName = \"web01\"\nscsi0:0.fileName = \"web01.vmdk\"\n\
             scsi0:1.fileName = \"web01_1-000001.vmdk\"\nscsi0:2.present = \"FALSE\"\n\
             scsi0:2.fileName = \"old.vmdk\"\nide1:0.deviceType = \"cdrom-image\"\n\
             ide1:0.fileName = \"/iso/x.vmdk\"\n",
        )
        .unwrap();
        let names = disks_named_by(&vmx).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let text = b"a = \"1\"\nscsi0:1.fileName = \"../shared/data.vmdk\"\r\nnvram = \"x\"\n";
        let map = [(Name::new("../shared/data.vmdk"), Name::new("data.vmdk"))];
        let (new, changes) = rewrite_vmx(text, &map);
        assert_eq!(
            new,
            b"a = \"1\"\nscsi0:1.fileName = \"data.vmdk\"\r\nnvram = \"x\"\n".to_vec()
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(
            names,
            vec![Name::new("web01.vmdk"), Name::new("web01_1-000001.vmdk")]
        );
    }
}
