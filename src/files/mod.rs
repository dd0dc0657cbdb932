//! File-level restore: the files inside a snapshot's disk images, read in-process through
//! the snapshot's disk views (no restored copy, no loop device, no kernel mount of a
//! guest's metadata).
//!
//! A path inside a snapshot is `/<disk>/<volume>/<path in the filesystem>`: `<disk>` is a
//! disk's name in the manifest, `<volume>` is `p<N>` (partition N), `fs` (a filesystem on a
//! whole disk) or `lvm/<vg>/<lv>`.
//!
//! - [`Browser`]: one snapshot's disks, volumes and filesystems, and path resolution.
//! - `list`: `ls`. `extract`: `dump` and `restore --path`. `catalog`: what `find` searches,
//!   written at backup time. `mount`: the read-only FUSE view of every snapshot.

pub mod catalog;
pub mod extract;
pub mod list;
pub mod mount;

use crate::blockdev::BlockRead;
use crate::fs::volume::{self, Volume};
use crate::fs::{FileType, Filesystem, Ino, Meta};
use crate::snapshot::view::{DiskView, Store};
use crate::snapshot::Snapshot;
use crate::{Error, Id, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Most symlinks followed while resolving one path (as Linux's ELOOP limit).
const MAX_LINKS: usize = 40;

/// One snapshot, browsable.
pub struct Browser {
    pub store: Arc<Store>,
    pub id: Id,
    pub snap: Snapshot,
    pub disks: Vec<Arc<DiskView>>,
    volumes: OnceLock<std::result::Result<Vec<Volume>, String>>,
    fss: Mutex<HashMap<usize, Arc<dyn Filesystem>>>,
}

/// What a path names.
#[derive(Clone, Debug)]
pub enum Target {
    /// `/`: the snapshot's disks.
    Root,
    /// `/<disk>`: its volumes.
    Disk(usize),
    /// A step inside a volume path: `/<disk>/lvm` or `/<disk>/lvm/<vg>`.
    VolumeDir { disk: usize, prefix: String },
    /// A file, directory or link inside volume `vol` (an index into [`Browser::volumes`]);
    /// `path` is its path in the filesystem ("" for the root).
    Node {
        vol: usize,
        ino: Ino,
        path: Vec<u8>,
        meta: Meta,
    },
}

impl Browser {
    pub fn new(store: &Arc<Store>, id: Id, snap: Snapshot) -> Browser {
        let disks = snap
            .disks
            .iter()
            .map(|d| Arc::new(DiskView::new(store.clone(), d.clone())))
            .collect();
        Browser {
            store: store.clone(),
            id,
            snap,
            disks,
            volumes: OnceLock::new(),
            fss: Mutex::new(HashMap::new()),
        }
    }

    pub fn disk_name(&self, i: usize) -> String {
        self.snap.disks[i].name.to_string()
    }

    /// Every volume of every disk (read on first use).
    pub fn volumes(&self) -> Result<&[Volume]> {
        let v = self.volumes.get_or_init(|| {
            let devs: Vec<crate::fs::Dev> = self
                .disks
                .iter()
                .map(|d| d.clone() as Arc<dyn BlockRead>)
                .collect();
            volume::discover(&devs).map_err(|e| e.to_string())
        });
        match v {
            Ok(v) => Ok(v),
            Err(e) => Err(Error::Guest(e.clone())),
        }
    }

    /// The filesystem of volume `vol`, opened once.
    pub fn fs(&self, vol: usize) -> Result<Arc<dyn Filesystem>> {
        if let Some(f) = self.fss.lock().unwrap_or_else(|e| e.into_inner()).get(&vol) {
            return Ok(f.clone());
        }
        let v = &self.volumes()?[vol];
        let f = volume::open(v, &self.disk_name(v.disk))?;
        self.fss
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vol, f.clone());
        Ok(f)
    }

    /// The full snapshot path of volume `vol`.
    pub fn volume_path(&self, vol: usize) -> Result<String> {
        let v = &self.volumes()?[vol];
        Ok(format!("/{}/{}", self.disk_name(v.disk), v.path))
    }

    /// Resolves `/<disk>/<volume>/<path>`. Symlinks inside the filesystem are followed on
    /// the way, not at the end (as `ls -l` and `lstat` do); an absolute link target is
    /// taken relative to the volume's root.
    pub fn resolve(&self, path: &[u8]) -> Result<Target> {
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        let Some((first, rest)) = comps.split_first() else {
            return Ok(Target::Root);
        };
        let disk = self
            .snap
            .disks
            .iter()
            .position(|d| d.name.as_bytes() == *first)
            .ok_or_else(|| not_found(path, "no disk of this snapshot has that name"))?;
        if rest.is_empty() {
            return Ok(Target::Disk(disk));
        }
        let vols = self.volumes()?;
        // The longest volume path that the next components spell.
        let mut found = None;
        for (i, v) in vols.iter().enumerate().filter(|(_, v)| v.disk == disk) {
            let vc: Vec<&str> = v.path.split('/').collect();
            if rest.len() >= vc.len() && vc.iter().zip(rest).all(|(a, b)| a.as_bytes() == *b) {
                found = Some((i, vc.len()));
            }
        }
        let Some((vol, used)) = found else {
            let prefix: Vec<String> = rest
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let prefix = prefix.join("/");
            if vols
                .iter()
                .any(|v| v.disk == disk && v.path.starts_with(&format!("{prefix}/")))
            {
                return Ok(Target::VolumeDir { disk, prefix });
            }
            return Err(not_found(
                path,
                "no volume of that disk has that name; `cairn ls SNAP /DISK` lists them",
            ));
        };
        let fs = self.fs(vol)?;
        let mut ino = fs.root();
        let mut walked: Vec<Vec<u8>> = Vec::new();
        let mut todo: Vec<Vec<u8>> = rest[used..].iter().rev().map(|c| c.to_vec()).collect();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == b".." {
                walked.pop();
                ino = self.walk_to(fs.as_ref(), &walked, path)?;
                continue;
            }
            let e = fs
                .lookup(ino, &c)?
                .ok_or_else(|| not_found(path, "no such file or directory"))?;
            let last = todo.is_empty();
            if e.kind == FileType::Symlink && !last {
                links += 1;
                if links > MAX_LINKS {
                    return Err(not_found(path, "too many levels of symbolic links"));
                }
                let target = fs.read_link(e.ino)?;
                if target.first() == Some(&b'/') {
                    walked.clear();
                }
                for t in target
                    .split(|&b| b == b'/')
                    .filter(|t| !t.is_empty() && *t != b".")
                    .rev()
                {
                    todo.push(t.to_vec());
                }
                ino = self.walk_to(fs.as_ref(), &walked, path)?;
                continue;
            }
            if !last && e.kind != FileType::Dir {
                return Err(not_found(path, "a component is not a directory"));
            }
            walked.push(c);
            ino = e.ino;
        }
        Ok(Target::Node {
            vol,
            ino,
            path: walked.join(&b'/'),
            meta: fs.stat(ino)?,
        })
    }

    /// The inode of `comps` from the root, following no links (they were resolved).
    fn walk_to(&self, fs: &dyn Filesystem, comps: &[Vec<u8>], path: &[u8]) -> Result<Ino> {
        let mut ino = fs.root();
        for c in comps {
            ino = fs
                .lookup(ino, c)?
                .ok_or_else(|| not_found(path, "no such file or directory"))?
                .ino;
        }
        Ok(ino)
    }
}

fn not_found(path: &[u8], why: &str) -> Error {
    Error::Usage(format!("{}: {why}", String::from_utf8_lossy(path)))
}
