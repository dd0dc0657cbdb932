//! The volumes of a VM's disks: partitions (GPT, MBR with logical partitions), the logical
//! volumes of LVM2 groups inside them (a group may span several disks of the VM), and what
//! each holds, named as file-level restore paths name them: `p2`, `fs` (a filesystem on a
//! whole unpartitioned disk), `lvm/<vg>/<lv>`.
//!
//! Nothing here trusts the guest: every reader is bounded, and a volume cairn does not read
//! is listed with the reason (encrypted, swap, an unsupported LVM segment type, no known
//! filesystem) rather than hidden.

use super::{Dev, Filesystem};
use crate::blockdev::{BlockRead, Slice};
use crate::{Error, Result};
use std::sync::Arc;

/// What a volume holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Content {
    /// A filesystem cairn reads ("ext4", "ntfs", "vfat", "xfs").
    Filesystem(String),
    /// An LVM2 physical volume: its logical volumes are volumes of their own.
    LvmPhysicalVolume(String),
    /// An MBR extended partition: a container of the logical partitions.
    Extended,
    /// Not read, and why.
    Refused(String),
}

/// One volume of a disk.
#[derive(Clone, serde::Serialize)]
pub struct Volume {
    /// Index of the disk (in the order given to [`discover`]) the volume is on; for a
    /// logical volume, the disk of its first physical volume.
    pub disk: usize,
    /// `p<N>`, `fs`, or `lvm/<vg>/<lv>`.
    pub path: String,
    pub size: u64,
    /// Offset on its disk (partitions and whole disks; None for logical volumes).
    pub offset: Option<u64>,
    /// The partition type ("Linux filesystem", "EFI System", …), "whole disk", or
    /// "LVM logical volume".
    pub role: String,
    /// The GPT partition name.
    pub name: Option<String>,
    /// The filesystem label.
    pub label: Option<String>,
    pub content: Content,
    /// What the partition table, LVM or filesystem reader read around.
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub dev: Option<Dev>,
}

/// Every volume of the given disks, disk by disk, partitions in number order, then the
/// logical volumes of the LVM groups found.
pub fn discover(disks: &[Dev]) -> Result<Vec<Volume>> {
    let mut out = Vec::new();
    let mut pvs: Vec<(super::lvm::PhysicalVolume, Dev, usize)> = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let table = match super::partition::read(disk.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                out.push(Volume {
                    disk: i,
                    path: "fs".into(),
                    size: disk.size(),
                    offset: Some(0),
                    role: "whole disk".into(),
                    name: None,
                    label: None,
                    content: Content::Refused(format!("the partition table is damaged: {e}")),
                    warnings: Vec::new(),
                    dev: None,
                });
                continue;
            }
        };
        let Some(table) = table else {
            let mut v = Volume {
                disk: i,
                path: "fs".into(),
                size: disk.size(),
                offset: Some(0),
                role: "whole disk".into(),
                name: None,
                label: None,
                content: Content::Refused(String::new()),
                warnings: Vec::new(),
                dev: Some(disk.clone()),
            };
            classify(&mut v, &mut pvs);
            out.push(v);
            continue;
        };
        for p in &table.partitions {
            let mut v = Volume {
                disk: i,
                path: format!("p{}", p.number),
                size: p.len,
                offset: Some(p.start),
                role: p.type_name.clone(),
                name: p.name.clone(),
                label: None,
                content: Content::Extended,
                warnings: Vec::new(),
                dev: None,
            };
            if !p.extended {
                match Slice::new(disk.clone(), p.start, p.len, &v.path) {
                    Ok(s) => {
                        v.dev = Some(Arc::new(s));
                        classify(&mut v, &mut pvs);
                    }
                    Err(e) => v.content = Content::Refused(e.to_string()),
                }
            }
            out.push(v);
        }
        if let Some(v) = out.iter_mut().rev().find(|v| v.disk == i) {
            v.warnings.extend(table.warnings.iter().cloned());
        }
    }
    if !pvs.is_empty() {
        let first_disk: Vec<(String, usize)> = pvs
            .iter()
            .map(|(pv, _, d)| (pv.vg_name.clone(), *d))
            .collect();
        let lvs = super::lvm::assemble(pvs.into_iter().map(|(pv, dev, _)| (pv, dev)).collect());
        match lvs {
            Ok(lvs) => {
                for lv in lvs {
                    let disk = first_disk
                        .iter()
                        .find(|(vg, _)| *vg == lv.vg)
                        .map_or(0, |(_, d)| *d);
                    let mut v = Volume {
                        disk,
                        path: format!("lvm/{}/{}", lv.vg, lv.name),
                        size: lv.size,
                        offset: None,
                        role: "LVM logical volume".into(),
                        name: None,
                        label: None,
                        content: Content::Refused(String::new()),
                        warnings: Vec::new(),
                        dev: None,
                    };
                    match lv.dev {
                        Ok(dev) => {
                            v.dev = Some(dev);
                            classify(&mut v, &mut Vec::new());
                        }
                        Err(why) => v.content = Content::Refused(why),
                    }
                    out.push(v);
                }
            }
            Err(e) => {
                for v in out.iter_mut() {
                    if matches!(v.content, Content::LvmPhysicalVolume(_)) {
                        v.warnings
                            .push(format!("its LVM metadata cannot be read: {e}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Decides what `v.dev` holds: a refusal by magic, an LVM PV, or a filesystem.
fn classify(v: &mut Volume, pvs: &mut Vec<(super::lvm::PhysicalVolume, Dev, usize)>) {
    let Some(dev) = v.dev.clone() else { return };
    if let Some(why) = refusal(dev.as_ref()) {
        v.content = Content::Refused(why.into());
        return;
    }
    match super::lvm::probe(dev.as_ref()) {
        Ok(Some(pv)) => {
            v.content = Content::LvmPhysicalVolume(pv.vg_name.clone());
            pvs.push((pv, dev, v.disk));
            return;
        }
        Ok(None) => {}
        Err(e) => {
            v.content = Content::Refused(format!("a damaged LVM physical volume: {e}"));
            return;
        }
    }
    v.content = match detect(dev.as_ref()) {
        Some(kind) => Content::Filesystem(kind.into()),
        None => Content::Refused(
            "no filesystem cairn reads (it reads ext2/3/4, NTFS, FAT and XFS); the raw \
             volume is still in the disk image"
                .into(),
        ),
    };
}

/// The filesystem on `dev`, by its signature.
pub fn detect(dev: &dyn BlockRead) -> Option<&'static str> {
    if super::ntfs::probe(dev) {
        Some("ntfs")
    } else if super::ext4::probe(dev) {
        Some("ext4")
    } else if super::xfs::probe(dev) {
        Some("xfs")
    } else if super::fat::probe(dev) {
        Some("vfat")
    } else {
        None
    }
}

/// Opens the filesystem of a volume, or says why it cannot be.
pub fn open(v: &Volume, disk_name: &str) -> Result<Arc<dyn Filesystem>> {
    let what = format!("/{disk_name}/{}", v.path);
    let (Content::Filesystem(kind), Some(dev)) = (&v.content, &v.dev) else {
        let why = match &v.content {
            Content::Refused(r) => r.clone(),
            Content::Extended => "an MBR extended partition, a container of the logical \
                                  partitions listed beside it"
                .into(),
            Content::LvmPhysicalVolume(vg) => format!(
                "an LVM physical volume of group {vg}; its logical volumes are under \
                 /{disk_name}/lvm/{vg}/"
            ),
            Content::Filesystem(_) => "not readable".into(),
        };
        return Err(Error::Unsupported(format!("{what}: {why}")));
    };
    let opened = match kind.as_str() {
        "ntfs" => super::ntfs::open(dev.clone()),
        "ext4" => super::ext4::open(dev.clone()),
        "xfs" => super::xfs::open(dev.clone()),
        _ => super::fat::open(dev.clone()),
    };
    opened.map_err(|e| match e {
        Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
        e => Error::Guest(format!("{what}: {e}")),
    })
}

/// What the first bytes of a volume say it holds, for volumes no reader opens: a refusal
/// names the reason.
pub fn refusal(dev: &dyn BlockRead) -> Option<&'static str> {
    let mut head = [0u8; 4096];
    let n = head.len().min(dev.size() as usize);
    dev.read_at(0, &mut head[..n]).ok()?;
    let head = &head[..n];
    if head.starts_with(b"LUKS\xba\xbe") || head.starts_with(b"SKUL\xba\xbe") {
        Some("encrypted (LUKS); cairn does not decrypt guest volumes")
    } else if head.get(3..11) == Some(b"-FVE-FS-") {
        Some("encrypted (BitLocker); cairn does not decrypt guest volumes")
    } else if head.get(4086..4096) == Some(b"SWAPSPACE2")
        || head.get(4086..4096) == Some(b"SWAP-SPACE")
    {
        Some("swap space, which holds no files")
    } else {
        None
    }
}
