//! `ls`: the disks and volumes of a snapshot, and the entries of a directory inside one.

use super::{Browser, Target};
use crate::fs::volume::Content;
use crate::fs::{FileType, Filesystem, Ino, Meta, Time};
use crate::Result;
use std::collections::HashSet;

/// One line of `ls`, one object of `ls --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The full path inside the snapshot.
    pub path: String,
    pub name: String,
    /// "disk", "volume", "dir", "file", "symlink", "chardev", "blockdev", "fifo", "socket".
    pub kind: &'static str,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// RFC 3339, UTC, with nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nlink: Option<u32>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Alternate data streams (NTFS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<crate::fs::Stream>,
    /// Disks: the source format. Volumes: the partition type ("EFI System", …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Volumes: the filesystem ("ext4", …), or why it is not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

pub fn time_string(t: Time) -> String {
    chrono::DateTime::from_timestamp(t.sec, t.nsec)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_else(|| format!("@{}.{:09}", t.sec, t.nsec))
}

impl Row {
    /// The `kind` name of a file type.
    pub fn kind_of(k: FileType) -> &'static str {
        kind_name(k)
    }
}

fn kind_name(k: FileType) -> &'static str {
    match k {
        FileType::File => "file",
        FileType::Dir => "dir",
        FileType::Symlink => "symlink",
        FileType::CharDev => "chardev",
        FileType::BlockDev => "blockdev",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

fn node_row(fs: &dyn Filesystem, path: String, name: String, meta: &Meta) -> Row {
    let target = (meta.kind == FileType::Symlink)
        .then(|| fs.read_link(meta.ino).ok())
        .flatten()
        .map(|t| String::from_utf8_lossy(&t).into_owned());
    Row {
        path,
        name,
        kind: kind_name(meta.kind),
        size: meta.size,
        mode: Some(meta.mode),
        uid: Some(meta.uid),
        gid: Some(meta.gid),
        owner: meta.owner.clone(),
        mtime: Some(time_string(meta.mtime)),
        nlink: Some(meta.nlink),
        target,
        streams: fs.streams(meta.ino).unwrap_or_default(),
        role: None,
        content: None,
        label: None,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Lists what `path` names: the disks (at `/`), a disk's volumes, a directory's entries
/// (all the way down with `recursive`), or a file itself. Rows go to `out` as they are
/// found, so a big tree streams. Returns the warnings of the volumes involved.
pub fn list(
    b: &Browser,
    path: &[u8],
    recursive: bool,
    out: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    match b.resolve(path)? {
        Target::Root => {
            for i in 0..b.disks.len() {
                let d = &b.snap.disks[i];
                out(Row {
                    path: format!("/{}", d.name),
                    name: d.name.to_string(),
                    kind: "disk",
                    size: d.size,
                    role: Some(d.format.clone()),
                    ..blank()
                })?;
                volumes_of(b, i, None, out)?;
            }
        }
        Target::Disk(i) => volumes_of(b, i, None, out)?,
        Target::VolumeDir { disk, prefix } => volumes_of(b, disk, Some(&prefix), out)?,
        Target::Node {
            vol,
            ino,
            path: inner,
            meta,
        } => {
            let fs = b.fs(vol)?;
            warnings.extend(
                fs.warnings()
                    .into_iter()
                    .map(|w| format!("{}: {w}", b.volume_path(vol).unwrap_or_default())),
            );
            let base = if inner.is_empty() {
                b.volume_path(vol)?
            } else {
                format!(
                    "{}/{}",
                    b.volume_path(vol)?,
                    String::from_utf8_lossy(&inner)
                )
            };
            if meta.kind != FileType::Dir {
                let name = base.rsplit('/').next().unwrap_or("").to_string();
                out(node_row(fs.as_ref(), base, name, &meta))?;
                return Ok(warnings);
            }
            let mut seen = HashSet::new();
            walk(fs.as_ref(), ino, &base, recursive, &mut seen, 0, out)?;
        }
    }
    Ok(warnings)
}

fn walk(
    fs: &dyn Filesystem,
    dir: Ino,
    base: &str,
    recursive: bool,
    seen: &mut HashSet<Ino>,
    depth: usize,
    out: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    if !seen.insert(dir) || depth > 256 {
        return Ok(()); // a directory loop in damaged metadata
    }
    let mut entries = fs.read_dir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let path = join(base, &name);
        let meta = match fs.stat(e.ino) {
            Ok(m) => m,
            Err(err) => {
                eprintln!("cairn: warning: {path}: {err}");
                continue;
            }
        };
        out(node_row(fs, path.clone(), name, &meta))?;
        if recursive && meta.kind == FileType::Dir {
            walk(fs, e.ino, &path, true, seen, depth + 1, out)?;
        }
    }
    Ok(())
}

fn blank() -> Row {
    Row {
        path: String::new(),
        name: String::new(),
        kind: "volume",
        size: 0,
        mode: None,
        uid: None,
        gid: None,
        owner: None,
        mtime: None,
        nlink: None,
        target: None,
        streams: Vec::new(),
        role: None,
        content: None,
        label: None,
    }
}

/// The volumes of disk `i` (below `prefix`, for `/<disk>/lvm/<vg>`), with their labels.
fn volumes_of(
    b: &Browser,
    i: usize,
    prefix: Option<&str>,
    out: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    for (n, v) in b.volumes()?.iter().enumerate() {
        if v.disk != i || prefix.is_some_and(|p| !v.path.starts_with(&format!("{p}/"))) {
            continue;
        }
        let label = match &v.content {
            Content::Filesystem(_) => b.fs(n).ok().and_then(|f| f.label()),
            _ => None,
        }
        .or_else(|| v.name.clone());
        out(Row {
            path: format!("/{}/{}", b.disk_name(i), v.path),
            name: v.path.clone(),
            kind: "volume",
            size: v.size,
            role: Some(v.role.clone()),
            content: Some(v.content.clone()),
            label,
            ..blank()
        })?;
    }
    Ok(())
}
