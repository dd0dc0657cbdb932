//! What to back up of a VM: disk images given one by one, or a VM folder as the hypervisor
//! left it (the VMware Consolidated Backup way).
//!
//! In a folder, the disks are those the `.vmx` names (each read through its delta chain as
//! the guest sees it), or, without a `.vmx`, every disk image that is not a piece of
//! another (an extent, a parent, a backing file). Lock files, swap and VMware logs are
//! skipped, and said so. Every other file up to [`CONFIG_MAX`] is the VM's configuration
//! (`.vmx`, `.vmxf`, `.nvram`, `.vmsd`, …), stored whole so restore gives it back byte for
//! byte. Larger files that are not disks (suspend memory, core dumps) are skipped.

use crate::image::{self, DiskImage};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Largest file stored as configuration; bigger non-disk files are skipped.
pub const CONFIG_MAX: u64 = 64 << 20;

/// The format recorded for config files.
pub const FILE_FORMAT: &str = "file";

/// A disk or config file to back up, under the name it is restored as.
pub struct Item {
    pub name: String,
    pub path: PathBuf,
    /// The source format recorded in the manifest: the image's, or "file" for config.
    pub format: &'static str,
    pub image: Box<dyn DiskImage>,
}

/// A file of a VM folder that is not backed up, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Inventory {
    pub disks: Vec<Item>,
    pub files: Vec<Item>,
    pub skipped: Vec<Skipped>,
}

/// Sorts the command line's paths into disks, config files and skipped files. Every name
/// must be unique, since restore writes them all into one folder.
pub fn inventory(paths: &[PathBuf]) -> Result<Inventory> {
    if paths.is_empty() {
        return Err(Error::Usage("no disk images or VM folders given".into()));
    }
    let mut inv = Inventory::default();
    for p in paths {
        if p.is_dir() {
            scan_folder(p, &mut inv)?;
        } else {
            inv.disks.push(open_disk(p)?);
        }
    }
    let mut names = HashSet::new();
    for item in inv.disks.iter().chain(&inv.files) {
        if !names.insert(item.name.as_str()) {
            return Err(Error::Usage(format!(
                "two files are named {}; back up each VM folder on its own, or give each \
                 disk a distinct file name",
                item.name
            )));
        }
    }
    Ok(inv)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Usage(format!("{} has no file name", p.display())))
}

fn open_disk(p: &Path) -> Result<Item> {
    let image = image::open(p)?;
    Ok(Item {
        name: file_name(p)?,
        format: image.format(),
        image,
        path: p.to_path_buf(),
    })
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
fn named_like_disk(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".vmdk", ".qcow2", ".img", ".raw", ".vhd", ".vhdx"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn scan_folder(dir: &Path, inv: &mut Inventory) -> Result<()> {
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
        if let Some(reason) = skip_reason(&name) {
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
                let p = dir.join(n);
                if !p.is_file() {
                    return Err(Error::Usage(format!(
                        "{} names disk {}, which does not exist; nothing was backed up",
                        vmx[0].display(),
                        p.display()
                    )));
                }
                disks.push(open_disk(&p)?);
            }
        }
        None => {
            for p in rest
                .iter()
                .filter(|p| named_like_disk(&file_name(p).unwrap_or_default()))
            {
                disks.push(open_disk(p)?);
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
        if named.is_some() && named_like_disk(&name) && image::open(&p).is_ok() {
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
                image: Box::new(image::RawImage::open(&p)?),
                path: p,
            });
        }
    }
    inv.disks.extend(disks);
    Ok(())
}

/// The disk files a `.vmx` names (`scsi0:0.fileName = "web01.vmdk"`), leaving out CD-ROM
/// and floppy images.
fn disks_named_by(vmx: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read(vmx).map_err(|e| Error::io(format!("reading {}", vmx.display()), e))?;
    let text = String::from_utf8_lossy(&text);
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"');
            values.insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
    }
    let mut out = Vec::new();
    for (k, v) in &values {
        let Some(dev) = k.strip_suffix(".filename") else {
            continue;
        };
        let kind = values.get(&format!("{dev}.devicetype")).map(String::as_str);
        let present = values.get(&format!("{dev}.present")).map(String::as_str);
        if present.is_some_and(|p| p.eq_ignore_ascii_case("false"))
            || kind
                .is_some_and(|t| t.contains("cdrom") || t.contains("floppy") || t.contains("atapi"))
            || !v.to_ascii_lowercase().ends_with(".vmdk")
        {
            continue;
        }
        out.push(v.clone());
    }
    Ok(out)
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
        assert_eq!(names, vec!["web01.vmdk", "web01_1-000001.vmdk"]);
    }
}
