//! Snapshot manifests (one per VM backup), their chunk tables, and the names inside them.
//!
//! A manifest names the VM, time, host, tags, parent, and per disk its size, source format
//! and the ids of its chunk tables. Each table covers a fixed span of the disk (the config's
//! `table_span`, 1 GiB by default) and is itself a content-addressed blob, so an unchanged
//! span of a disk yields the same table id and costs nothing in the next snapshot: every
//! snapshot is a full restore point at the price of an incremental.
//!
//! Versions: 1 had no `files`; 2 added `files` (a VM folder's `.vmx`, `.nvram`, … stored and
//! deduplicated like disks); 3 keeps names as bytes, records how the VM's config named each
//! disk (`config_ref`, so a restore can point the config at the restored disk), the disk
//! ranges `repair snapshots` had to give up (`lost`), and the file catalog (`catalog`). Versions 1 and 2 are still read.

mod name;
mod table;
pub mod view;

pub use name::{Name, MAX_NAME};
pub use table::{ChunkTable, Extent};

use crate::image::SourceStamp;
use crate::repo::envelope::FileKind;
use crate::repo::Repository;
use crate::{Error, Id, Result};
use serde::{Deserialize, Serialize};

pub const MANIFEST_VERSION: u32 = 3;

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
    /// The file catalog of the disks' filesystems (format "catalog"), for `find`.
    pub catalog: Option<Disk>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Disk {
    /// File name of the source, as restored into the target folder.
    pub name: Name,
    pub format: String,
    pub size: u64,
    pub table_span: u64,
    /// One per span; None when the whole span is a hole.
    pub tables: Vec<Option<Id>>,
    pub stamp: Option<SourceStamp>,
    /// The path the VM's config (`.vmx`) gave for this disk, when it named it.
    pub config_ref: Option<Name>,
    /// Disk byte ranges (start, length) whose data was lost to repository damage and that
    /// `repair snapshots` replaced with zeros.
    pub lost: Vec<(u64, u64)>,
    /// The layers of the source's backing chain, top first (one for a plain image): a
    /// later backup whose lower layers are exactly these reads only its new top layer.
    pub layers: Vec<LayerRecord>,
    /// Set when only the changes since the parent snapshot were read.
    pub change: Option<ChangeRecord>,
}

/// One layer of a source chain: its (first) file's name and combined stamp.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerRecord {
    pub name: Name,
    pub stamp: Option<SourceStamp>,
}

/// Where a changed-block backup of a disk took its change map from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    /// "extents" (`--changed-extents`), "bitmap" (a qcow2 dirty bitmap) or "chain" (the top
    /// layer of a chain whose lower layers are unchanged).
    pub kind: String,
    /// The map's changeId, the bitmap's name, or the top layer's file name.
    pub id: Option<String>,
    /// The snapshot the changes are relative to.
    pub parent: Id,
    /// Disk bytes the map marked changed.
    pub changed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub holes: u64,
    pub duration_ms: u64,
}

/// The disk record of manifest versions 1 and 2.
#[derive(Deserialize)]
struct DiskV2 {
    name: Name,
    format: String,
    size: u64,
    table_span: u64,
    tables: Vec<Option<Id>>,
    stamp: Option<SourceStamp>,
}

impl From<DiskV2> for Disk {
    fn from(d: DiskV2) -> Disk {
        Disk {
            name: d.name,
            format: d.format,
            size: d.size,
            table_span: d.table_span,
            tables: d.tables,
            stamp: d.stamp,
            config_ref: None,
            lost: Vec::new(),
            layers: Vec::new(),
            change: None,
        }
    }
}

/// Manifest version 2 (version 1 is the same without `files`). Postcard is not
/// self-describing, so an old manifest is decoded with its own layout and converted.
#[derive(Deserialize)]
struct SnapshotV2 {
    version: u32,
    vm: String,
    time: String,
    host: String,
    tags: Vec<String>,
    parent: Option<Id>,
    disks: Vec<DiskV2>,
    summary: Summary,
    files: Vec<DiskV2>,
}

#[derive(Deserialize)]
struct SnapshotV1 {
    version: u32,
    vm: String,
    time: String,
    host: String,
    tags: Vec<String>,
    parent: Option<Id>,
    disks: Vec<DiskV2>,
    summary: Summary,
}

impl From<SnapshotV2> for Snapshot {
    fn from(s: SnapshotV2) -> Snapshot {
        Snapshot {
            version: s.version,
            vm: s.vm,
            time: s.time,
            host: s.host,
            tags: s.tags,
            parent: s.parent,
            disks: s.disks.into_iter().map(Disk::from).collect(),
            summary: s.summary,
            files: s.files.into_iter().map(Disk::from).collect(),
            catalog: None,
        }
    }
}

impl From<SnapshotV1> for Snapshot {
    fn from(s: SnapshotV1) -> Snapshot {
        SnapshotV2 {
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
        .into()
    }
}

impl Snapshot {
    /// Disks, files and the catalog: everything whose chunk tables the snapshot
    /// references.
    pub fn items(&self) -> impl Iterator<Item = &Disk> {
        self.disks.iter().chain(&self.files).chain(&self.catalog)
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

    /// Decodes a manifest of any version this build reads, and checks what a restore
    /// would trust: names, sizes and table counts.
    pub fn decode(b: &[u8], name: &str) -> Result<Snapshot> {
        let bad =
            |e: postcard::Error| Error::corrupt(name, format!("manifest does not decode: {e}"));
        // Every version starts with its version number.
        let (version, _) = postcard::take_from_bytes::<u32>(b).map_err(bad)?;
        let snap: Snapshot = match version {
            1 => postcard::from_bytes::<SnapshotV1>(b).map_err(bad)?.into(),
            2 => postcard::from_bytes::<SnapshotV2>(b).map_err(bad)?.into(),
            MANIFEST_VERSION => postcard::from_bytes(b).map_err(bad)?,
            v => {
                return Err(Error::corrupt(
                    name,
                    format!(
                        "manifest version {v}; this cairn reads versions 1 to \
                         {MANIFEST_VERSION}. Upgrade cairn to read it"
                    ),
                ))
            }
        };
        if let Some(problem) = snap.problem() {
            return Err(Error::corrupt(name, problem));
        }
        Ok(snap)
    }

    /// What makes this manifest unusable, if anything: a name that would escape the
    /// restore target, two items with one name, tables that do not cover the size, sizes or
    /// lost ranges that overflow the sums readers take of them.
    pub fn problem(&self) -> Option<String> {
        if self.vm.is_empty() {
            return Some("the VM name is empty".into());
        }
        // `snapshots`, backup's report and restore's progress add up the sizes, and restore
        // the lost lengths: a damaged manifest must not overflow them.
        if self
            .items()
            .try_fold(0u64, |sum, d| sum.checked_add(d.size))
            .is_none()
        {
            return Some("its sizes add up to more than 2^64 bytes".into());
        }
        let mut seen = std::collections::HashSet::new();
        for d in self.items() {
            let lost = d.lost.iter().try_fold(0u64, |sum, &(start, len)| {
                start
                    .checked_add(len)
                    .filter(|&end| end <= d.size)
                    .and(sum.checked_add(len))
            });
            if lost.is_none_or(|l| l > d.size) {
                return Some(format!(
                    "{:?}: its lost ranges do not fit in its {} bytes",
                    d.name, d.size
                ));
            }
            if let Some(why) = d.name.problem() {
                return Some(format!(
                    "item name {:?} is not a safe file name: {why}",
                    d.name
                ));
            }
            // The catalog is never restored as a file: its name may be anything safe.
            let restored = !self.catalog.as_ref().is_some_and(|c| std::ptr::eq(c, d));
            if restored && !seen.insert(&d.name) {
                return Some(format!("two items are named {:?}", d.name));
            }
            if !d.table_span.is_power_of_two()
                || d.tables.len() as u64 != d.size.div_ceil(d.table_span)
            {
                return Some(format!(
                    "{:?}: {} chunk tables of {} bytes cannot cover {} bytes",
                    d.name,
                    d.tables.len(),
                    d.table_span,
                    d.size
                ));
            }
        }
        None
    }
}

/// A snapshot file that could not be read, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damaged {
    /// The file's backend name, `snapshots/<id>`.
    pub name: String,
    pub id: Option<String>,
    pub error: String,
}

/// Every snapshot of the repository: the readable ones oldest first, and the damaged ones.
/// One damaged file must not stop backups of other VMs or restores of other snapshots, but
/// it must never vanish silently either: callers report `damaged`.
pub struct Loaded {
    pub snapshots: Vec<(Id, Snapshot)>,
    pub damaged: Vec<Damaged>,
}

impl Loaded {
    /// A line for stderr naming the damaged snapshots, or None.
    pub fn warning(&self) -> Option<String> {
        if self.damaged.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.damaged.iter().map(|d| d.name.as_str()).collect();
        Some(format!(
            "{} snapshot file(s) cannot be read and were left out: {}. Run `cairn check`; \
             remove them with `cairn forget ID`",
            names.len(),
            names.join(", ")
        ))
    }
}

pub fn load_all(repo: &Repository) -> Result<Loaded> {
    let mut snapshots = Vec::new();
    let mut damaged = Vec::new();
    for name in repo.snapshot_files()? {
        let id = name.rsplit('/').next().and_then(Id::from_hex);
        let read = repo
            .read_file(FileKind::Snapshot, &name)
            .and_then(|b| Snapshot::decode(&b, &name));
        match (id, read) {
            (Some(id), Ok(snap)) => snapshots.push((id, snap)),
            // Forgotten since the listing.
            (_, Err(e)) if e.is_not_found() => {}
            // A transient I/O failure is not damage: stop rather than act on a partial list.
            (_, Err(e @ Error::Io { .. })) => return Err(e),
            (id, Err(e)) => damaged.push(Damaged {
                name: name.clone(),
                id: id.map(|i| i.to_hex()),
                error: e.to_string(),
            }),
            (None, Ok(_)) => damaged.push(Damaged {
                name: name.clone(),
                id: None,
                error: "its name is not a snapshot id".into(),
            }),
        }
    }
    snapshots.sort_by(|a, b| {
        a.1.parsed_time()
            .cmp(&b.1.parsed_time())
            .then(a.0.cmp(&b.0))
    });
    Ok(Loaded { snapshots, damaged })
}

/// Reads and decodes a chunk table blob.
pub fn load_table(
    repo: &Repository,
    reader: &crate::repo::cache::CacheReader,
    id: &Id,
) -> Result<ChunkTable> {
    ChunkTable::decode(
        &crate::repo::blobs::read_blob(repo, reader, id)?,
        &format!("chunk table {}", id.short()),
    )
}

pub fn save(repo: &Repository, snap: &Snapshot) -> Result<Id> {
    repo.write_file(FileKind::Snapshot, &snap.encode())
}

/// Finds a snapshot by id prefix, `VM:latest`, or `latest`. A damaged snapshot that the
/// spec names is an error saying so; `latest` skips damaged ones with a warning.
pub fn resolve(repo: &Repository, spec: &str) -> Result<(Id, Snapshot)> {
    let loaded = load_all(repo)?;
    let (vm, rest) = match spec.rsplit_once(':') {
        Some((vm, rest)) => (Some(vm), rest),
        None => (None, spec),
    };
    let none = || {
        Error::Usage(format!(
            "no snapshot matches {spec:?}; see `cairn snapshots`"
        ))
    };
    if rest == "latest" {
        if let Some(w) = loaded.warning() {
            eprintln!("cairn: warning: {w}");
        }
        return loaded
            .snapshots
            .into_iter()
            .rev()
            .find(|(_, s)| vm.is_none_or(|v| s.vm == v))
            .ok_or_else(none);
    }
    let prefix = rest.to_ascii_lowercase();
    if let Some(d) = loaded
        .damaged
        .iter()
        .find(|d| d.id.as_ref().is_some_and(|i| i.starts_with(&prefix)) && !prefix.is_empty())
    {
        return Err(Error::corrupt(
            &d.name,
            format!(
                "{}. Restore another snapshot, or remove this one with `cairn forget {}`",
                d.error,
                d.id.as_deref().map_or("", |i| &i[..8])
            ),
        ));
    }
    let mut found: Vec<_> = loaded
        .snapshots
        .into_iter()
        .filter(|(id, s)| id.to_hex().starts_with(&prefix) && vm.is_none_or(|v| s.vm == v))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(none()),
        n => Err(Error::Usage(format!(
            "{n} snapshots start with {spec:?}; give more digits"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, format: &str, size: u64, tables: Vec<Option<Id>>) -> Disk {
        Disk {
            name: Name::new(name),
            format: format.into(),
            size,
            table_span: 1 << 30,
            tables,
            stamp: None,
            config_ref: None,
            lost: Vec::new(),
            layers: Vec::new(),
            change: None,
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            version: MANIFEST_VERSION,
            vm: "web01".into(),
            time: "2026-11-22T04:00:00+01:00".into(),
            host: "proxy".into(),
            tags: vec!["nightly".into()],
            parent: Some(Id([1; 32])),
            disks: vec![Disk {
                config_ref: Some(Name::new("../shared/disk0.img")),
                lost: vec![(4096, 65536)],
                ..disk(
                    "disk0.img",
                    "raw",
                    (1 << 30) + 1,
                    vec![None, Some(Id([2; 32]))],
                )
            }],
            summary: Summary::default(),
            files: vec![disk("web01.vmx", "file", 1234, vec![Some(Id([4; 32]))])],
            catalog: Some(disk("catalog", "catalog", 99, vec![Some(Id([5; 32]))])),
        }
    }

    #[test]
    fn manifest_round_trip() {
        let s = sample();
        assert_eq!(Snapshot::decode(&s.encode(), "s").unwrap(), s);
    }

    /// Names that would write outside the restore target are refused when decoding.
    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["../../../etc/cron.d/x", "/etc/cron.d/x", "", ".."] {
            let mut s = sample();
            s.files[0].name = Name::new(bad);
            let e = Snapshot::decode(&s.encode(), "s").unwrap_err().to_string();
            assert!(e.contains("not a safe file name"), "{bad}: {e}");
        }
        let mut s = sample();
        s.files[0].name = s.disks[0].name.clone();
        assert!(Snapshot::decode(&s.encode(), "s").is_err());
        let mut s = sample();
        s.disks[0].tables.pop();
        assert!(Snapshot::decode(&s.encode(), "s").is_err());
    }

    /// Sizes and lost ranges that would overflow what `snapshots` and restore add up are
    /// refused (a disk of 2^64 − 1 bytes in spans of 2^63 has matching tables, and its size
    /// plus any other overflowed `logical_size`).
    #[test]
    fn overflowing_sizes_are_refused() {
        let mut s = sample();
        s.disks[0].size = u64::MAX;
        s.disks[0].table_span = 1 << 63;
        s.disks[0].tables = vec![None, None];
        let e = Snapshot::decode(&s.encode(), "s").unwrap_err().to_string();
        assert!(e.contains("2^64"), "{e}");
        for lost in [
            vec![(0, u64::MAX)],
            vec![(u64::MAX, 1)],
            vec![(0, 1 << 30), (0, 1 << 30)],
            vec![(1 << 30, 2)],
        ] {
            let mut s = sample();
            s.disks[0].lost = lost.clone();
            let e = Snapshot::decode(&s.encode(), "s").unwrap_err().to_string();
            assert!(e.contains("lost ranges"), "{lost:?}: {e}");
        }
        let mut s = sample();
        s.disks[0].lost = vec![(0, 1 << 30), (1 << 30, 1)];
        assert_eq!(Snapshot::decode(&s.encode(), "s").unwrap(), s);
    }

    #[derive(Serialize)]
    struct DiskOld<'a> {
        name: &'a str,
        format: &'a str,
        size: u64,
        table_span: u64,
        tables: Vec<Option<Id>>,
        stamp: Option<SourceStamp>,
    }

    /// Manifests as cairn wrote them before version 3 (postcard, fields in order, names as
    /// strings) still decode: version 2 with `files`, version 1 without.
    #[test]
    fn reads_versions_1_and_2() {
        #[derive(Serialize)]
        struct V1<'a> {
            version: u32,
            vm: &'a str,
            time: &'a str,
            host: &'a str,
            tags: Vec<&'a str>,
            parent: Option<Id>,
            disks: Vec<DiskOld<'a>>,
            summary: Summary,
        }
        #[derive(Serialize)]
        struct V2<'a> {
            v1: V1<'a>,
            files: Vec<DiskOld<'a>>,
        }
        let old = |name| DiskOld {
            name,
            format: "raw",
            size: 4096,
            table_span: 1 << 30,
            tables: vec![Some(Id([2; 32]))],
            stamp: None,
        };
        let v1 = |version| V1 {
            version,
            vm: "web01",
            time: "2026-11-22T04:00:00+01:00",
            host: "proxy",
            tags: vec![],
            parent: None,
            disks: vec![old("disk0.img")],
            summary: Summary::default(),
        };
        let want = disk("disk0.img", "raw", 4096, vec![Some(Id([2; 32]))]);
        let b = postcard::to_stdvec(&v1(1)).unwrap();
        let s = Snapshot::decode(&b, "old").unwrap();
        assert_eq!((s.version, s.vm.as_str()), (1, "web01"));
        assert_eq!(s.disks, vec![want.clone()]);
        assert!(s.files.is_empty());
        let b2 = postcard::to_stdvec(&V2 {
            v1: v1(2),
            files: vec![old("web01.vmx")],
        })
        .unwrap();
        let s = Snapshot::decode(&b2, "v2").unwrap();
        assert_eq!(s.version, 2);
        assert_eq!(s.disks, vec![want]);
        assert_eq!(s.files[0].name, *"web01.vmx");
        let mut future = b.clone();
        future[0] = 9;
        let e = Snapshot::decode(&future, "new").unwrap_err().to_string();
        assert!(e.contains("version 9") && e.contains("Upgrade"), "{e}");
    }
}
