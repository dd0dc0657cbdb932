//! LVM2 volume groups: physical volumes found by their label, VG metadata read from their
//! metadata areas, and logical volumes cut out of the PVs as [`BlockRead`] views.
//!
//! Supported:
//! - the "LVM2 001" label in any of sectors 0-3, its PV header, every metadata area listed
//!   (checksums of the label, mda headers and metadata text checked; text wrapping around
//!   the circular buffer; copies flagged "ignored" skipped); the newest copy (highest
//!   seqno) wins, on one PV and across the PVs of a VG;
//! - VGs whose PVs lie on several disks of one VM (PVs are matched by UUID);
//! - linear LVs (any number of segments, e.g. after `lvextend`) as a [`Concat`] of
//!   [`Slice`]s, and striped segments (RAID 0, any stripe size dividing the stripe width).
//!
//! Refused, per LV (the LV is listed with `dev: Err(reason)`): thin, thin-pool, snapshot,
//! mirror, raid*, cache, writecache, vdo, integrity and other segment types; LVs with a
//! PV missing from the disks given (or flagged MISSING); segments that leave gaps, overlap,
//! or lie outside their PV. Only VISIBLE LVs are listed (hidden sub-LVs such as
//! `_rimage_0` or `_tmeta` are not). The LVM1 format and lvmlockd/shared VGs' locking are
//! not looked at; exported and clustered VGs are read like any other.

mod config;
#[cfg(test)]
mod fuzz;
mod label;
#[cfg(test)]
mod synth;
#[cfg(test)]
pub(crate) mod tests;
mod vg;

use crate::blockdev::{fits, past_end, BlockRead, Concat, Slice};
use crate::fs::Dev;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Metadata areas looked at per PV (LVM writes one or two).
const MAX_MDAS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// As LVM prints it ("xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx").
    pub pv_uuid: String,
    /// Empty for a PV in no VG, or one without metadata areas (`--metadatacopies 0`),
    /// whose VG is known only from another PV's metadata.
    pub vg_name: String,
    pub vg_uuid: String,
    /// The sequence number of `metadata` (0 if none).
    pub seqno: u64,
    /// Where extents begin, in bytes (the first data area of the PV header).
    pub pe_start: u64,
    /// The newest VG metadata text on this PV (empty if none).
    pub metadata: String,
    /// The device size the PV header records, in bytes.
    pub dev_size: u64,
}

/// Some if `dev` carries an LVM2 label ("LABELONE" in one of sectors 0-3, type "LVM2 001").
/// A label that is there but damaged, or metadata areas that are all damaged, are errors.
pub fn probe(dev: &dyn BlockRead) -> Result<Option<PhysicalVolume>> {
    let Some(l) = label::read_label(dev)? else {
        return Ok(None);
    };
    // (seqno, name, id, text) of the newest copy.
    let mut best: Option<(u64, String, String, String)> = None;
    let mut first_err = None;
    for &(off, size) in l.mdas.iter().take(MAX_MDAS) {
        let copy = label::read_mda(dev, off, size).and_then(|t| match t {
            Some(t) => vg::header(&t).map(|h| Some((h, t))),
            None => Ok(None),
        });
        match copy {
            Ok(Some(((name, id, seqno), text))) => {
                if best.as_ref().is_none_or(|b| seqno > b.0) {
                    best = Some((seqno, name, id, text));
                }
            }
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let (None, Some(e)) = (&best, first_err) {
        return Err(e);
    }
    let (seqno, vg_name, vg_uuid, metadata) = best.unwrap_or_default();
    Ok(Some(PhysicalVolume {
        pv_uuid: label::dashed(&l.uuid),
        vg_name,
        vg_uuid,
        seqno,
        pe_start: l.pe_start,
        metadata,
        dev_size: l.device_size,
    }))
}

pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    /// Bytes (extents × extent size); 0 if the segments could not be read.
    pub size: u64,
    /// Err(reason) when this LV cannot be read: an unsupported segment type (thin, raid,
    /// mirror, snapshot/cow, cache, vdo...) or a PV missing from the disks given.
    pub dev: std::result::Result<Dev, String>,
}

impl std::fmt::Debug for LogicalVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalVolume")
            .field("vg", &self.vg)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("dev", &self.dev.as_ref().map(|d| d.size()))
            .finish()
    }
}

/// The visible logical volumes of every VG that the given PVs make up (PVs of one VG may
/// lie on several disks of the same VM), VG by VG in the order the PVs are given, LVs in
/// metadata order. Each VG is described by the newest metadata (highest seqno) among its
/// PVs. An error only when that metadata cannot be interpreted at all.
pub fn assemble(pvs: Vec<(PhysicalVolume, Dev)>) -> Result<Vec<LogicalVolume>> {
    let mut devs: HashMap<String, Dev> = HashMap::new();
    for (pv, dev) in &pvs {
        devs.entry(label::bare(&pv.pv_uuid))
            .or_insert_with(|| dev.clone());
    }
    // Each VG (by UUID) and the index of the PV with its newest metadata.
    let mut newest: Vec<(&str, usize)> = Vec::new();
    for (i, (pv, _)) in pvs.iter().enumerate() {
        if pv.vg_uuid.is_empty() || pv.metadata.is_empty() {
            continue;
        }
        match newest.iter_mut().find(|(u, _)| *u == pv.vg_uuid) {
            Some(e) if pv.seqno > pvs[e.1].0.seqno => e.1 = i,
            Some(_) => {}
            None => newest.push((&pv.vg_uuid, i)),
        }
    }
    let mut out = Vec::new();
    for &(_, i) in &newest {
        let vg = vg::interpret(&pvs[i].0.metadata)?;
        let ext = vg.extent_size.saturating_mul(512);
        for lv in vg.lvs.iter().filter(|l| l.visible) {
            let size = lv.segments.as_ref().map_or(0, |s| {
                s.iter()
                    .fold(0u64, |a, s| a.saturating_add(s.extent_count))
                    .saturating_mul(ext)
            });
            let dev =
                build(&vg, lv, &devs).map_err(|e| format!("LVM2 LV {}/{}: {e}", vg.name, lv.name));
            out.push(LogicalVolume {
                vg: vg.name.clone(),
                name: lv.name.clone(),
                size,
                dev,
            });
        }
    }
    Ok(out)
}

/// The view of one LV: its segments laid end to end.
fn build(
    vg: &vg::Vg,
    lv: &vg::Lv,
    devs: &HashMap<String, Dev>,
) -> std::result::Result<Dev, String> {
    let segs = lv.segments.as_ref().map_err(|e| e.clone())?;
    let ext = vg
        .extent_size
        .checked_mul(512)
        .ok_or("extent size overflows")?;
    let mut parts: Vec<Dev> = Vec::with_capacity(segs.len());
    let mut next = 0u64;
    for s in segs {
        if s.start_extent != next {
            return Err(format!(
                "its segments leave a gap or overlap at extent {next} (a segment starts at {})",
                s.start_extent
            ));
        }
        next = s
            .start_extent
            .checked_add(s.extent_count)
            .ok_or("segment extents overflow")?;
        if s.kind != "striped" {
            return Err(vg::unsupported(&s.kind));
        }
        let n = s.stripes.len() as u64;
        if n == 0 || s.extent_count == 0 || s.extent_count % n != 0 {
            return Err(format!(
                "a segment of {} extents cannot be split into {n} stripes",
                s.extent_count
            ));
        }
        let per = s.extent_count / n;
        let len = per.checked_mul(ext).ok_or("segment size overflows")?;
        let mut areas: Vec<Dev> = Vec::with_capacity(s.stripes.len());
        for (key, pe) in &s.stripes {
            let pv =
                vg.pvs.iter().find(|p| p.key == *key).ok_or_else(|| {
                    format!("a segment lies on {key}, which the VG does not list")
                })?;
            let uuid = label::dashed(&pv.id);
            let dev = devs
                .get(&pv.id)
                .filter(|_| !pv.missing)
                .ok_or_else(|| format!("PV {uuid} ({key}) is missing from the disks given"))?;
            if pv
                .pe_count
                .is_some_and(|c| pe.checked_add(per).is_none_or(|end| end > c))
            {
                return Err(format!(
                    "extents {pe}..+{per} lie past the end of PV {uuid} ({key})"
                ));
            }
            let start = pv
                .pe_start
                .checked_mul(512)
                .and_then(|b| pe.checked_mul(ext).and_then(|o| b.checked_add(o)))
                .ok_or("segment offset overflows")?;
            let what = format!("extents {pe}..+{per} of PV {uuid}");
            let slice = Slice::new(dev.clone(), start, len, &what).map_err(|e| e.to_string())?;
            areas.push(Arc::new(slice));
        }
        if areas.len() == 1 {
            parts.extend(areas);
        } else {
            let chunk = s.stripe_size.saturating_mul(512);
            if chunk == 0 || len % chunk != 0 {
                return Err(format!(
                    "stripe size of {} sectors does not divide the stripe width ({len} bytes)",
                    s.stripe_size
                ));
            }
            parts.push(Arc::new(Striped {
                size: len.checked_mul(n).ok_or("segment size overflows")?,
                stripes: areas,
                chunk,
            }));
        }
    }
    match parts.len() {
        0 => Err("it has no segments".into()),
        1 => Ok(parts.remove(0)),
        _ => Ok(Arc::new(Concat::new(parts).map_err(|e| e.to_string())?)),
    }
}

/// A striped (RAID 0) segment: chunk `i` of the segment is chunk `i / n` of stripe
/// `i % n`, as device-mapper's stripe target maps it.
struct Striped {
    stripes: Vec<Dev>,
    chunk: u64,
    size: u64,
}

impl BlockRead for Striped {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !fits(offset, buf.len(), self.size) {
            return Err(past_end("striped volume", offset, buf.len(), self.size));
        }
        let n = self.stripes.len() as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (c, within) = (pos / self.chunk, pos % self.chunk);
            let take = ((self.chunk - within) as usize).min(buf.len() - done);
            let stripe = self
                .stripes
                .get((c % n) as usize)
                .ok_or_else(|| Error::Guest("striped volume: no such stripe".into()))?;
            stripe.read_at((c / n) * self.chunk + within, &mut buf[done..done + take])?;
            done += take;
        }
        Ok(())
    }
}
