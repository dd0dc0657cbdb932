//! MFT records ("FILE") and index blocks ("INDX"): the update sequence (fixup) check, the
//! record header, and the attributes laid out in one record.
//!
//! Multi-sector structures end every 512-byte stride with a copy of the update sequence
//! number, the real last two bytes being kept in the update sequence array; a stride whose
//! tail does not match was torn by an interrupted write, and the structure is refused.

use super::attr::{decode_runs, Run};
use super::utf16_to_utf8;
use crate::fs::Le;
use crate::{Error, Result};

/// The update sequence stride: 512 bytes whatever the sector size.
const STRIDE: usize = 512;

pub const REC_IN_USE: u16 = 0x0001;
pub const REC_IS_DIR: u16 = 0x0002;

/// The end-of-attributes marker.
const ATTR_END: u32 = 0xFFFF_FFFF;

/// Runs of one attribute extent, at most (a cap against hostile runlists).
pub const MAX_RUNS: usize = 1 << 20;

/// Checks the `magic` and update sequence of `buf` and puts back the bytes the sequence
/// numbers stand in for.
pub fn apply_fixups(buf: &mut [u8], magic: &[u8; 4], what: &str) -> Result<()> {
    let le = Le::new(buf, what);
    if le.bytes(0, 4)? != magic {
        return Err(Error::Guest(format!(
            "{what}: signature is not \"{}\"",
            String::from_utf8_lossy(magic)
        )));
    }
    let usa_off = le.u16(4)? as usize;
    let usa_count = le.u16(6)? as usize;
    let strides = buf.len() / STRIDE;
    if usa_count != strides + 1 {
        return Err(Error::Guest(format!(
            "{what}: update sequence has {usa_count} entries for {strides} sectors"
        )));
    }
    let usa = le.bytes(usa_off, usa_count * 2)?.to_vec();
    if usa_off < 8 || usa_off + usa.len() > STRIDE - 2 {
        return Err(Error::Guest(format!(
            "{what}: update sequence array at byte {usa_off} overlaps a sector tail"
        )));
    }
    for i in 1..usa_count {
        let tail = i * STRIDE - 2;
        if buf[tail..tail + 2] != usa[0..2] {
            return Err(Error::Guest(format!(
                "{what}: update sequence mismatch in sector {} (torn write?)",
                i - 1
            )));
        }
        buf[tail..tail + 2].copy_from_slice(&usa[i * 2..i * 2 + 2]);
    }
    Ok(())
}

/// An MFT record after its fixups.
pub struct Record {
    pub number: u64,
    pub buf: Vec<u8>,
    pub seq: u16,
    pub flags: u16,
    /// Reference of the base record (0 for a base record).
    pub base: u64,
}

/// One attribute extent as stored in a record.
#[derive(Clone)]
pub struct RawAttr {
    pub ty: u32,
    /// The attribute's name (UTF-8), empty for the unnamed one.
    pub name: Vec<u8>,
    pub flags: u16,
    pub body: Body,
}

#[derive(Clone)]
pub enum Body {
    Resident(Vec<u8>),
    NonResident(NonResident),
}

/// A non-resident extent: the runs for VCNs `lowest_vcn..=highest_vcn`; the sizes are
/// meaningful in the extent starting at VCN 0.
#[derive(Clone)]
pub struct NonResident {
    pub lowest_vcn: u64,
    pub highest_vcn: u64,
    pub runs: Vec<Run>,
    pub alloc_size: u64,
    pub data_size: u64,
    pub init_size: u64,
}

pub fn record_number(mref: u64) -> u64 {
    mref & 0x0000_FFFF_FFFF_FFFF
}

pub fn record_seq(mref: u64) -> u16 {
    (mref >> 48) as u16
}

impl Record {
    /// Checks and parses the raw record `number`.
    pub fn parse(number: u64, mut buf: Vec<u8>) -> Result<Record> {
        let what = format!("NTFS: MFT record {number}");
        apply_fixups(&mut buf, b"FILE", &what)?;
        let le = Le::new(&buf, &what);
        let seq = le.u16(0x10)?;
        let attrs = le.u16(0x14)? as usize;
        let flags = le.u16(0x16)?;
        let used = le.u32(0x18)? as usize;
        let base = le.u64(0x20)?;
        if used > buf.len() || attrs >= used {
            return Err(Error::Guest(format!(
                "{what}: {used} bytes in use, attributes at {attrs}, in a {}-byte record",
                buf.len()
            )));
        }
        buf.truncate(used);
        Ok(Record {
            number,
            buf,
            seq,
            flags,
            base,
        })
    }

    pub fn in_use(&self) -> bool {
        self.flags & REC_IN_USE != 0
    }

    /// The attribute extents of this record, in stored order.
    pub fn attrs(&self) -> Result<Vec<RawAttr>> {
        let what = format!("NTFS: MFT record {}", self.number);
        let le = Le::new(&self.buf, &what);
        let mut at = le.u16(0x14)? as usize;
        let mut out = Vec::new();
        // Each attribute is at least 16 bytes, so the loop ends within the record.
        loop {
            let ty = le.u32(at)?;
            if ty == ATTR_END {
                return Ok(out);
            }
            let len = le.u32(at + 4)? as usize;
            if len < 16 || len % 8 != 0 {
                return Err(Error::Guest(format!(
                    "{what}: attribute 0x{ty:x} at byte {at} has length {len}"
                )));
            }
            let a = Le::new(le.bytes(at, len)?, &what);
            out.push(parse_attr(&a, ty, &what)?);
            at += len;
        }
    }
}

fn parse_attr(a: &Le, ty: u32, what: &str) -> Result<RawAttr> {
    let non_resident = a.u8(8)? != 0;
    let name_len = a.u8(9)? as usize;
    let name_off = a.u16(0x0A)? as usize;
    let flags = a.u16(0x0C)?;
    let name = if name_len == 0 {
        Vec::new()
    } else {
        let raw = a.bytes(name_off, name_len * 2)?;
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        utf16_to_utf8(&units)
    };
    let body = if !non_resident {
        let vlen = a.u32(0x10)? as usize;
        let voff = a.u16(0x14)? as usize;
        Body::Resident(a.bytes(voff, vlen)?.to_vec())
    } else {
        let lowest_vcn = a.u64(0x10)?;
        let highest_vcn = a.u64(0x18)?;
        let map_off = a.u16(0x20)? as usize;
        let alloc_size = a.u64(0x28)?;
        let data_size = a.u64(0x30)?;
        let init_size = a.u64(0x38)?;
        let pairs =
            a.b.get(map_off..)
                .ok_or_else(|| Error::Guest(format!("{what}: runlist of 0x{ty:x} outside it")))?;
        let runs = decode_runs(pairs, lowest_vcn, MAX_RUNS, what)?;
        let end = runs.last().map_or(lowest_vcn, |r| r.vcn + r.len);
        // An empty runlist has highest_vcn = -1 (lowest 0): no clusters.
        let want_end = highest_vcn.wrapping_add(1);
        if end != want_end && !(runs.is_empty() && want_end == 0) {
            return Err(Error::Guest(format!(
                "{what}: runlist of attribute 0x{ty:x} ends at VCN {end}, header says {want_end}"
            )));
        }
        Body::NonResident(NonResident {
            lowest_vcn,
            highest_vcn,
            runs,
            alloc_size,
            data_size,
            init_size,
        })
    };
    Ok(RawAttr {
        ty,
        name,
        flags,
        body,
    })
}
