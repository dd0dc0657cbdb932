//! Snapshot manifests (one per VM backup) and disk chunk tables.
//!
//! A manifest names the VM, time, host, tags, parent, and per disk its size, source format
//! and the ids of its chunk tables. Each table covers a fixed span of the disk (the config's
//! `table_span`, 1 GiB by default) and is itself a content-addressed blob, so an unchanged
//! span of a disk yields the same table id and costs nothing in the next snapshot: every
//! snapshot is a full restore point at the price of an incremental.
//!
//! Version 2 added `files`: a VM folder's small files (`.vmx`, `.nvram`, …), stored and
//! deduplicated exactly like disks, so restore gives them back byte for byte. Version 1
//! manifests are still read (with no files).

use crate::image::SourceStamp;
use crate::repo::envelope::FileKind;
use crate::repo::Repository;
use crate::{Error, Id, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST_VERSION: u32 = 2;
const TABLE_VERSION: u8 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    pub vm: String,
    /// RFC 3339 with the offset the user (or the clock) gave.
    pub time: String,
    pub host: String,
    pub tags: Vec<String>,
    pub parent: Option<Id>,
    pub disks: Vec<Disk>,
    pub summary: Summary,
    /// The VM's config and other small files (format "file"), restored byte-exact.
    pub files: Vec<Disk>,
}

/// Version 1 of the manifest: version 2 without `files`. Postcard is not self-describing,
/// so an old manifest is decoded with its own layout and converted.
#[derive(Deserialize)]
struct SnapshotV1 {
    version: u32,
    vm: String,
    time: String,
    host: String,
    tags: Vec<String>,
    parent: Option<Id>,
    disks: Vec<Disk>,
    summary: Summary,
}

impl From<SnapshotV1> for Snapshot {
    fn from(s: SnapshotV1) -> Snapshot {
        Snapshot {
            version: s.version,
            vm: s.vm,
            time: s.time,
            host: s.host,
            tags: s.tags,
            parent: s.parent,
            disks: s.disks,
            summary: s.summary,
            files: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Disk {
    /// File name of the source, as restored into the target folder.
    pub name: String,
    pub format: String,
    pub size: u64,
    pub table_span: u64,
    /// One per span; None when the whole span is a hole.
    pub tables: Vec<Option<Id>>,
    pub stamp: Option<SourceStamp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub holes: u64,
    pub duration_ms: u64,
}

impl Snapshot {
    /// Disks and files: everything whose chunk tables the snapshot references.
    pub fn items(&self) -> impl Iterator<Item = &Disk> {
        self.disks.iter().chain(&self.files)
    }

    pub fn logical_size(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }

    pub fn parsed_time(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(&self.time).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("snapshot serializes")
    }

    pub fn decode(b: &[u8], name: &str) -> Result<Snapshot> {
        let bad =
            |e: postcard::Error| Error::corrupt(name, format!("manifest does not decode: {e}"));
        // Every version starts with its version number.
        let (version, _) = postcard::take_from_bytes::<u32>(b).map_err(bad)?;
        match version {
            1 => Ok(postcard::from_bytes::<SnapshotV1>(b).map_err(bad)?.into()),
            MANIFEST_VERSION => postcard::from_bytes(b).map_err(bad),
            v => Err(Error::corrupt(
                name,
                format!(
                    "manifest version {v}; this cairn reads versions 1 to {MANIFEST_VERSION}. \
                     Upgrade cairn to read it"
                ),
            )),
        }
    }
}

/// One run of a disk: `len` bytes that are either a chunk or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub id: Option<Id>,
}

/// The pieces of one table span, in disk order.
/// Encoding: `version u8 | count u32 | (kind u8 | len u32 [| id 32 if kind = 1])*`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkTable {
    pub extents: Vec<Extent>,
}

impl ChunkTable {
    pub fn push(&mut self, e: Extent) {
        if e.id.is_none() {
            if let Some(last) = self.extents.last_mut() {
                if last.id.is_none() && last.len as u64 + e.len as u64 <= u32::MAX as u64 {
                    last.len += e.len;
                    return;
                }
            }
        }
        self.extents.push(e);
    }

    pub fn is_hole(&self) -> bool {
        self.extents.iter().all(|e| e.id.is_none())
    }

    pub fn len(&self) -> u64 {
        self.extents.iter().map(|e| e.len as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.extents.len() * 37);
        out.push(TABLE_VERSION);
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            out.push(e.id.is_some() as u8);
            out.extend_from_slice(&e.len.to_le_bytes());
            if let Some(id) = e.id {
                out.extend_from_slice(&id.0);
            }
        }
        out
    }

    pub fn decode(b: &[u8], name: &str) -> Result<ChunkTable> {
        let bad = |d: &str| Error::corrupt(name, format!("chunk table: {d}"));
        if b.first() != Some(&TABLE_VERSION) || b.len() < 5 {
            return Err(bad("unknown version or too short"));
        }
        let n = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes")) as usize;
        let mut extents = Vec::with_capacity(n.min(1 << 20));
        let mut pos = 5;
        for _ in 0..n {
            let kind = *b.get(pos).ok_or_else(|| bad("truncated"))?;
            let len = b.get(pos + 1..pos + 5).ok_or_else(|| bad("truncated"))?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
            pos += 5;
            let id = match kind {
                0 => None,
                1 => {
                    let id = b.get(pos..pos + 32).and_then(Id::from_slice);
                    pos += 32;
                    Some(id.ok_or_else(|| bad("truncated"))?)
                }
                _ => return Err(bad("unknown extent kind")),
            };
            extents.push(Extent { len, id });
        }
        if pos != b.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(ChunkTable { extents })
    }
}

/// Every snapshot in the repository, oldest first. A manifest that cannot be read is an
/// error naming it: listing must never silently hide a restore point.
pub fn load_all(repo: &Repository) -> Result<Vec<(Id, Snapshot)>> {
    let mut out = Vec::new();
    for name in repo.backend.list("snapshots")? {
        let Some(id) = name.rsplit('/').next().and_then(Id::from_hex) else {
            continue;
        };
        let snap = Snapshot::decode(&repo.read_file(FileKind::Snapshot, &name)?, &name)?;
        out.push((id, snap));
    }
    out.sort_by(|a, b| {
        a.1.parsed_time()
            .cmp(&b.1.parsed_time())
            .then(a.0.cmp(&b.0))
    });
    Ok(out)
}

pub fn save(repo: &Repository, snap: &Snapshot) -> Result<Id> {
    repo.write_file(FileKind::Snapshot, &snap.encode())
}

/// Finds a snapshot by id prefix, `VM:latest`, or `latest`.
pub fn resolve(repo: &Repository, spec: &str) -> Result<(Id, Snapshot)> {
    let all = load_all(repo)?;
    let (vm, rest) = match spec.rsplit_once(':') {
        Some((vm, rest)) => (Some(vm), rest),
        None => (None, spec),
    };
    if rest == "latest" {
        return all
            .into_iter()
            .rev()
            .find(|(_, s)| vm.is_none_or(|v| s.vm == v))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no snapshot matches {spec:?}; see `cairn snapshots`"
                ))
            });
    }
    let prefix = rest.to_ascii_lowercase();
    let mut found: Vec<_> = all
        .into_iter()
        .filter(|(id, s)| id.to_hex().starts_with(&prefix) && vm.is_none_or(|v| s.vm == v))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Usage(format!(
            "no snapshot matches {spec:?}; see `cairn snapshots`"
        ))),
        n => Err(Error::Usage(format!(
            "{n} snapshots start with {spec:?}; give more digits"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip() {
        let mut t = ChunkTable::default();
        t.push(Extent { len: 10, id: None });
        t.push(Extent { len: 5, id: None });
        t.push(Extent {
            len: 7,
            id: Some(Id([3; 32])),
        });
        assert_eq!(t.extents.len(), 2);
        assert_eq!(t.len(), 22);
        let b = t.encode();
        assert_eq!(ChunkTable::decode(&b, "t").unwrap(), t);
        assert!(ChunkTable::decode(&b[..b.len() - 1], "t").is_err());
    }

    #[test]
    fn manifest_round_trip() {
        let s = Snapshot {
            version: MANIFEST_VERSION,
            vm: "web01".into(),
            time: "2026-11-22T04:00:00+01:00".into(),
            host: "proxy".into(),
            tags: vec!["nightly".into()],
            parent: Some(Id([1; 32])),
            disks: vec![Disk {
                name: "disk0.img".into(),
                format: "raw".into(),
                size: 1 << 30,
                table_span: 1 << 30,
                tables: vec![None, Some(Id([2; 32]))],
                stamp: None,
            }],
            summary: Summary::default(),
            files: vec![Disk {
                name: "web01.vmx".into(),
                format: "file".into(),
                size: 1234,
                table_span: 1 << 30,
                tables: vec![Some(Id([4; 32]))],
                stamp: None,
            }],
        };
        assert_eq!(Snapshot::decode(&s.encode(), "s").unwrap(), s);
    }

    /// A version 1 manifest, as cairn 0.1 wrote it (postcard, fields in order, no
    /// `files`), still decodes.
    #[test]
    fn reads_version_1_manifests() {
        #[derive(Serialize)]
        struct V1<'a> {
            version: u32,
            vm: &'a str,
            time: &'a str,
            host: &'a str,
            tags: Vec<&'a str>,
            parent: Option<Id>,
            disks: Vec<Disk>,
            summary: Summary,
        }
        let disk = Disk {
            name: "disk0.img".into(),
            format: "raw".into(),
            size: 4096,
            table_span: 1 << 30,
            tables: vec![Some(Id([2; 32]))],
            stamp: None,
        };
        let b = postcard::to_stdvec(&V1 {
            version: 1,
            vm: "web01",
            time: "2026-11-22T04:00:00+01:00",
            host: "proxy",
            tags: vec![],
            parent: None,
            disks: vec![disk.clone()],
            summary: Summary::default(),
        })
        .unwrap();
        let s = Snapshot::decode(&b, "old").unwrap();
        assert_eq!((s.version, s.vm.as_str()), (1, "web01"));
        assert_eq!(s.disks, vec![disk]);
        assert!(s.files.is_empty());
        let mut future = b.clone();
        future[0] = 9;
        let e = Snapshot::decode(&future, "new").unwrap_err().to_string();
        assert!(e.contains("version 9") && e.contains("Upgrade"), "{e}");
    }
}
