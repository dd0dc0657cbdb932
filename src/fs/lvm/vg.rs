//! What a VG's metadata text says: its name, UUID and sequence number, its extent size, its
//! physical volumes (`pv0`, `pv1`, … with their UUIDs and `pe_start`), and each logical
//! volume's status and segments.
//!
//! ```text
//! vg0 {
//!     id = "…"  seqno = 7  extent_size = 8192          # sectors of 512 bytes
//!     physical_volumes { pv0 { id = "…"  pe_start = 2048  pe_count = 100 } }
//!     logical_volumes {
//!         root {
//!             status = ["READ", "WRITE", "VISIBLE"]
//!             segment1 { start_extent = 0  extent_count = 10  type = "striped"
//!                        stripe_count = 1  stripes = ["pv0", 0] }
//!         }
//!     }
//! }
//! ```
//!
//! A problem with one LV (a missing field, an unknown PV key) is kept with that LV, so the
//! others can still be read; only a VG without a name, UUID or extent size is an error.

use super::config::{self, Section, Value};
use super::label::bare;
use crate::{Error, Result};

/// Segments of one LV, at most.
const MAX_SEGMENTS: usize = 65_536;
/// Stripes of one segment, at most (LVM allows 128).
const MAX_STRIPES: usize = 128;

pub struct Vg {
    pub name: String,
    /// In 512-byte sectors.
    pub extent_size: u64,
    pub pvs: Vec<PvRef>,
    pub lvs: Vec<Lv>,
}

pub struct PvRef {
    /// The key the segments name it by ("pv0").
    pub key: String,
    /// Its UUID without dashes.
    pub id: String,
    /// In 512-byte sectors.
    pub pe_start: u64,
    pub pe_count: Option<u64>,
    /// The metadata flags it MISSING (LVM knew it was gone when it last wrote).
    pub missing: bool,
}

pub struct Lv {
    pub name: String,
    pub visible: bool,
    /// The segments, or why they cannot be read.
    pub segments: std::result::Result<Vec<Seg>, String>,
}

pub struct Seg {
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: String,
    /// In 512-byte sectors; 0 when not given (linear segments).
    pub stripe_size: u64,
    /// (PV key, first extent on that PV) per stripe.
    pub stripes: Vec<(String, u64)>,
}

/// The VG section of metadata text: (name, section). The text holds one section (the VG)
/// among top-level `key = value` items.
fn vg_section(top: &Section) -> Result<(&str, &Section)> {
    top.sections()
        .next()
        .ok_or_else(|| Error::Guest("LVM2 metadata text holds no volume group section".into()))
}

/// Name, UUID and sequence number of the VG the text describes.
pub fn header(text: &str) -> Result<(String, String, u64)> {
    let top = config::parse(text)?;
    let (name, s) = vg_section(&top)?;
    let (id, seqno) = ids(name, s)?;
    Ok((name.to_string(), id, seqno))
}

fn ids(name: &str, s: &Section) -> Result<(String, u64)> {
    let id = s
        .str("id")
        .ok_or_else(|| Error::Guest(format!("LVM2 metadata of VG {name}: no id")))?;
    let seqno = s
        .uint("seqno")
        .ok_or_else(|| Error::Guest(format!("LVM2 metadata of VG {name}: no seqno")))?;
    Ok((id.to_string(), seqno))
}

pub fn interpret(text: &str) -> Result<Vg> {
    let top = config::parse(text)?;
    let (name, s) = vg_section(&top)?;
    ids(name, s)?;
    let extent_size = s
        .uint("extent_size")
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Guest(format!("LVM2 metadata of VG {name}: no extent_size")))?;
    let mut pvs = Vec::new();
    for (key, pv) in s
        .section("physical_volumes")
        .into_iter()
        .flat_map(|p| p.sections())
    {
        let (Some(id), Some(pe_start)) = (pv.str("id"), pv.uint("pe_start")) else {
            // A PV entry without an id or pe_start: segments on it report "unknown PV".
            continue;
        };
        pvs.push(PvRef {
            key: key.to_string(),
            id: bare(id),
            pe_start,
            pe_count: pv.uint("pe_count"),
            missing: pv.strings("flags").contains(&"MISSING")
                || pv.strings("status").contains(&"MISSING"),
        });
    }
    let mut lvs = Vec::new();
    for (key, lv) in s
        .section("logical_volumes")
        .into_iter()
        .flat_map(|l| l.sections())
    {
        lvs.push(Lv {
            name: key.to_string(),
            visible: lv.strings("status").contains(&"VISIBLE"),
            segments: segments(lv),
        });
    }
    Ok(Vg {
        name: name.to_string(),
        extent_size,
        pvs,
        lvs,
    })
}

/// The segments of an LV section (`segment1`, `segment2`, …), sorted by first extent.
fn segments(lv: &Section) -> std::result::Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    for (key, s) in lv.sections() {
        if !key.starts_with("segment") {
            continue;
        }
        if out.len() >= MAX_SEGMENTS {
            return Err(format!("more than {MAX_SEGMENTS} segments"));
        }
        let field = |f: &str| {
            s.uint(f)
                .ok_or_else(|| format!("{key}: no {f} (or not a number)"))
        };
        let start_extent = field("start_extent")?;
        let extent_count = field("extent_count")?;
        // LVM writes the type; metadata without one is linear/striped.
        let kind = s.str("type").unwrap_or("striped").to_string();
        let mut stripes = Vec::new();
        if kind == "striped" {
            let a = s
                .array("stripes")
                .ok_or_else(|| format!("{key}: no stripes"))?;
            if a.len() > 2 * MAX_STRIPES {
                return Err(format!("{key}: more than {MAX_STRIPES} stripes"));
            }
            for pair in a.chunks(2) {
                match pair {
                    [Value::Str(pv), Value::Int(pe)] if *pe >= 0 => {
                        stripes.push((pv.clone(), *pe as u64))
                    }
                    _ => return Err(format!("{key}: stripes is not a list of \"pvN\", extent")),
                }
            }
            if let Some(n) = s.uint("stripe_count") {
                if n != stripes.len() as u64 {
                    return Err(format!(
                        "{key}: stripe_count {n} but {} stripes listed",
                        stripes.len()
                    ));
                }
            }
        }
        out.push(Seg {
            start_extent,
            extent_count,
            kind,
            stripe_size: s.uint("stripe_size").unwrap_or(0),
            stripes,
        });
    }
    out.sort_by_key(|s| s.start_extent);
    Ok(out)
}

/// Why a segment type is not read, naming the feature.
pub fn unsupported(kind: &str) -> String {
    let what = match kind {
        "thin" | "thin-pool" => "thin provisioning",
        "snapshot" => "a snapshot (copy-on-write)",
        "mirror" => "mirroring",
        k if k.starts_with("raid") => "RAID",
        "cache" | "cache-pool" | "writecache" => "caching",
        "vdo" | "vdo-pool" => "VDO compression and deduplication",
        "integrity" => "dm-integrity",
        "zero" | "error" => "a target without storage",
        _ => "an unknown segment type",
    };
    format!(
        "segment type \"{kind}\" ({what}) is not supported; only linear and striped LVs are read"
    )
}
