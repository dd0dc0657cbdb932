//! Change maps: which byte ranges of a disk changed since the parent snapshot, so that a
//! backup reads only those.
//!
//! Three sources, in this order:
//! 1. `--changed-extents [DISK=]FILE`: a JSON document of changed areas, in the shapes
//!    VMware's QueryChangedDiskAreas returns (`{"changedArea":[{"start","length"}], …}`),
//!    a plain list (`[{"offset"|"start", "length"}]`), or `nbdinfo --map --json` of a
//!    `qemu:dirty-bitmap:` context (its dirty entries), with an optional `changeId`;
//! 2. `--bitmap [DISK=]NAME`: a persistent dirty bitmap of a qcow2 image, read natively;
//! 3. without either: a chain whose lower layers are exactly the layers the parent read,
//!    with the same stamps (a nightly external snapshot), changed only in its top layer.
//!
//! A map is used only against the parent snapshot (this VM's latest), with a disk of the
//! same name and size (for a chain: the disk whose layers are the lower ones) and the same
//! chunk table span. Anything else, a malformed map, or one reaching past the disk's end,
//! falls back to a full read with the reason reported.

use crate::image::DiskImage;
use crate::snapshot::{Disk, Snapshot};
use crate::{Error, Id, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a map comes from, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapSource {
    /// `--changed-extents FILE`.
    Extents(PathBuf),
    /// `--bitmap NAME`.
    Bitmap(String),
}

/// `--changed-extents` / `--bitmap`, for all disks or one (`DISK=…`).
#[derive(Clone, Debug, Default)]
pub struct ChangeOptions {
    pub maps: Vec<(Option<String>, MapSource)>,
    /// Read the whole disk anyway and report changes the map missed.
    pub verify: bool,
}

impl ChangeOptions {
    /// The map source given for disk `name` (by file name), if any.
    pub fn for_disk(&self, name: &str) -> Option<&MapSource> {
        self.maps
            .iter()
            .find(|(d, _)| d.as_deref() == Some(name))
            .or_else(|| self.maps.iter().find(|(d, _)| d.is_none()))
            .map(|(_, m)| m)
    }
}

/// A usable change map for one disk.
#[derive(Clone, Debug)]
pub struct ChangeMap {
    /// "extents", "bitmap" or "chain".
    pub kind: &'static str,
    pub id: Option<String>,
    /// Sorted, merged, inside the disk.
    pub ranges: Vec<Range<u64>>,
}

impl ChangeMap {
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

/// The decision for one disk: a map and the parent's record of the disk, or why not.
pub enum Plan<'a> {
    Incremental {
        map: ChangeMap,
        parent: &'a Disk,
    },
    /// A full read; the reason is None when no map was asked for.
    Full(Option<String>),
}

/// Decides how to read disk `src_name` (its image `img`) given the parent snapshot.
/// `loaded` is what [`load`] made of the disk's change map file, if one is given.
pub fn plan<'a>(
    opts: &ChangeOptions,
    loaded: Option<Result<ChangeMap>>,
    parent: Option<&'a (Id, Snapshot)>,
    src_name: &crate::snapshot::Name,
    src_path: &Path,
    img: &dyn DiskImage,
    span: u64,
) -> Plan<'a> {
    let given = opts.for_disk(&src_name.to_string());
    let Some((_, parent_snap)) = parent else {
        return Plan::Full(given.map(|_| "there is no parent snapshot of this VM".to_string()));
    };
    let size = img.size();
    let same = |d: &&Disk| d.size == size && d.table_span == span && d.lost.is_empty();
    if let Some(src) = given {
        let Some(pd) = parent_snap.disks.iter().find(|d| d.name == *src_name) else {
            return Plan::Full(Some(format!(
                "the parent snapshot has no disk named {src_name}"
            )));
        };
        if !same(&pd) {
            return Plan::Full(Some(format!(
                "the parent snapshot's {src_name} has another size or layout ({} bytes, \
                     now {size})",
                pd.size
            )));
        }
        let m = match src {
            MapSource::Extents(f) => loaded.unwrap_or_else(|| read_extents_file(f, size)),
            MapSource::Bitmap(name) => {
                crate::image::qcow2_bitmap::read(src_path, name).and_then(|b| {
                    Ok(ChangeMap {
                        kind: "bitmap",
                        id: Some(b.name),
                        ranges: normalize(b.ranges, size)?,
                    })
                })
            }
        };
        return match m {
            Ok(m) => Plan::Incremental { map: m, parent: pd },
            Err(e) => Plan::Full(Some(e.to_string())),
        };
    }
    // A chain whose lower layers are exactly what the parent read of some disk.
    let layers = img.layers();
    if layers.len() < 2 || layers.iter().any(|l| l.stamp.is_none()) {
        return Plan::Full(None);
    }
    let lower = &layers[1..];
    let hit = parent_snap.disks.iter().filter(same).find(|d| {
        d.layers.len() == lower.len()
            && d.layers.iter().zip(lower).all(|(r, l)| {
                r.stamp.is_some()
                    && r.stamp == l.stamp
                    && l.files
                        .first()
                        .and_then(|f| f.file_name())
                        .is_some_and(|n| n.as_encoded_bytes() == r.name.as_bytes())
            })
    });
    let Some(pd) = hit else {
        return Plan::Full(None);
    };
    match img.top_layer(0..size).and_then(|r| normalize(r, size)) {
        Ok(ranges) => Plan::Incremental {
            map: ChangeMap {
                kind: "chain",
                id: layers[0]
                    .files
                    .first()
                    .and_then(|f| f.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                ranges,
            },
            parent: pd,
        },
        Err(e) => Plan::Full(Some(e.to_string())),
    }
}

/// Sorts and merges ranges; one reaching past `size` makes the whole map unusable.
pub fn normalize(mut v: Vec<Range<u64>>, size: u64) -> Result<Vec<Range<u64>>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        if r.end > size {
            return Err(Error::Usage(format!(
                "the change map covers bytes {}..{} but the disk has {size}: it is not this \
                 disk's map",
                r.start, r.end
            )));
        }
        match out.last_mut() {
            Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// At most this many bytes of a change map are hinted to the kernel before the backup
/// reads them: about what a NAS delivers while the repository's key is derived, and little
/// enough that the pages are still cached when the re-chunking gets to them.
const HINT_BYTES: u64 = 128 << 20;
/// And at most this many ranges: a map of a million scattered blocks costs a few system
/// calls per hinted range, which must stay small beside the key derivation.
const HINT_RANGES: usize = 1 << 16;

/// The change map file given for disk `src`, read and checked against its size (None: no
/// map file for this disk). Read while the repository opens, so [`hint`] can use it.
pub fn load(opts: &ChangeOptions, src: &crate::vm::Item) -> Option<Result<ChangeMap>> {
    match opts.for_disk(&src.name.to_string())? {
        MapSource::Extents(f) => Some(read_extents_file(f, src.image.size())),
        MapSource::Bitmap(_) => None,
    }
}

/// Asks the kernel to start reading the first ranges of `map` from disk `src`. Only a
/// hint: an image format that cannot map guest ranges to its file ignores it.
pub fn hint(map: &ChangeMap, src: &crate::vm::Item) {
    src.image
        .will_need(&first_ranges(&map.ranges, HINT_BYTES, HINT_RANGES));
}

/// The first `max_bytes` of `ranges`, in at most `max_ranges` ranges.
fn first_ranges(ranges: &[Range<u64>], max_bytes: u64, max_ranges: usize) -> Vec<Range<u64>> {
    let mut left = max_bytes;
    let mut out = Vec::new();
    for r in ranges.iter().take(max_ranges) {
        if left == 0 {
            break;
        }
        let len = (r.end - r.start).min(left);
        out.push(r.start..r.start + len);
        left -= len;
    }
    out
}

fn read_extents_file(path: &Path, size: u64) -> Result<ChangeMap> {
    let text = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading change map {}", path.display()), e))?;
    let (id, ranges) = parse_extents(&text)
        .map_err(|e| Error::Usage(format!("change map {} cannot be used: {e}", path.display())))?;
    Ok(ChangeMap {
        kind: "extents",
        id,
        ranges: normalize(ranges, size)
            .map_err(|e| Error::Usage(format!("change map {}: {e}", path.display())))?,
    })
}

/// Parses the JSON shapes of a change map; returns its changeId and ranges.
pub fn parse_extents(
    text: &[u8],
) -> std::result::Result<(Option<String>, Vec<Range<u64>>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("it is not JSON: {e}"))?;
    let id = v.get("changeId").and_then(|c| c.as_str()).map(String::from);
    let list = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("changedArea").or_else(|| o.get("extents")) {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err("no changedArea (or extents) list in it".into()),
        },
        _ => return Err("it is neither a list nor an object".into()),
    };
    let num = |e: &serde_json::Value, k: &str| -> std::result::Result<Option<u64>, String> {
        match e.get(k) {
            None => Ok(None),
            Some(n) => n
                .as_u64()
                .filter(|&n| n < 1 << 62)
                .map(Some)
                .ok_or_else(|| format!("{k} {n} is not a byte count")),
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        if !e.is_object() {
            return Err("an entry is not an object".into());
        }
        // nbdinfo --map: only dirty entries (bit 0 of type) are changes.
        let dirty = match (e.get("type").and_then(|t| t.as_u64()), e.get("description")) {
            (_, Some(serde_json::Value::String(d))) => d.split(',').any(|w| w.trim() == "dirty"),
            (Some(t), _) => t & 1 == 1,
            _ => true,
        };
        let start = num(e, "offset")?
            .or(num(e, "start")?)
            .ok_or("an entry has no offset or start")?;
        let len = num(e, "length")?.ok_or("an entry has no length")?;
        if dirty && len > 0 {
            out.push(start..start + len);
        }
    }
    Ok((id, out))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_bounded_in_bytes_and_ranges() {
        let r = vec![0..100, 200..300, 400..500];
        assert_eq!(first_ranges(&r, 150, 10), vec![0..100, 200..250]);
        assert_eq!(first_ranges(&r, 1000, 2), vec![0..100, 200..300]);
        assert_eq!(first_ranges(&r, 100, 10), vec![0..100]);
        // A hostile map of a million one-byte ranges is hinted in HINT_RANGES of them.
        let many: Vec<Range<u64>> = (0..1_000_000u64).map(|i| 2 * i..2 * i + 1).collect();
        assert_eq!(
            first_ranges(&many, HINT_BYTES, HINT_RANGES).len(),
            HINT_RANGES
        );
    }

    #[test]
    fn the_three_json_shapes() {
        let vmw = br#"{"startOffset":0,"length":1073741824,"changeId":"52 de/4","changedArea":[{"start":65536,"length":4096},{"start":0,"length":512}]}"#;
        let (id, r) = parse_extents(vmw).unwrap();
        assert_eq!(id.as_deref(), Some("52 de/4"));
        assert_eq!(normalize(r, 1 << 30).unwrap(), vec![0..512, 65536..69632]);
        let plain = br#"[{"offset":10,"length":5},{"start":12,"length":10}]"#;
        let (_, r) = parse_extents(plain).unwrap();
        assert_eq!(normalize(r, 100).unwrap(), vec![10..22]);
        let nbd = br#"[{"offset":0,"length":65536,"type":0,"description":"clean"},{"offset":65536,"length":65536,"type":1,"description":"dirty"}]"#;
        let (_, r) = parse_extents(nbd).unwrap();
        assert_eq!(r, vec![65536..131072]);
        assert!(parse_extents(b"{").is_err());
        assert!(parse_extents(br#"[{"offset":-1,"length":3}]"#).is_err());
        assert!(parse_extents(br#"{"changedArea":3}"#).is_err());
        assert!(normalize(vec![0..101], 100).is_err());
    }
}
