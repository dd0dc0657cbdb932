//! The on-disk structures of an LVM2 physical volume, before any metadata text:
//!
//! - the label header, in one of sectors 0-3: "LABELONE", the sector it lies in, a CRC of
//!   the rest of the sector, the offset of the PV header, and the type "LVM2 001";
//! - the PV header after it: the PV UUID (32 characters), the device size, then two lists
//!   of (offset, size) byte ranges ended by a zero entry: data areas (the first starts at
//!   `pe_start`) and metadata areas;
//! - in each metadata area, a 512-byte mda header (CRC, the magic " LVM2 x[5A%r0N*>",
//!   version 1, the area's start and size) followed by raw locations (offset, size, CRC,
//!   flags). The first raw location is the committed VG metadata text, kept in the rest of
//!   the area as a circular buffer: text running past the area's end continues right after
//!   the 512-byte header.
//!
//! Checksums are LVM's CRC-32 (the reflected IEEE polynomial, seeded with 0xf597a6cf, no
//! final inversion), so `flate2::Crc` cannot compute them.

use crate::blockdev::{fits, BlockRead};
use crate::fs::{read_vec, Le};
use crate::{Error, Result};

const SECTOR: u64 = 512;
const MDA_HEADER_SIZE: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The largest metadata text accepted (LVM's default metadata area is 1 MiB).
pub const MAX_TEXT: u64 = 16 << 20;
/// Raw location flag: this metadata copy is ignored (`pvchange --metadataignore`).
const RAW_LOCN_IGNORED: u32 = 1;

/// LVM's CRC-32 of `data`, continuing from `crc` (start with [`INITIAL_CRC`]).
pub fn crc(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

pub const INITIAL_CRC: u32 = 0xf597_a6cf;

/// What the label and PV header say.
pub struct Label {
    /// The 32-character PV UUID, without dashes.
    pub uuid: String,
    pub device_size: u64,
    /// Byte offset of the first data area (where extents begin), 0 if none is listed.
    pub pe_start: u64,
    /// Metadata areas: (offset, size) in bytes.
    pub mdas: Vec<(u64, u64)>,
}

/// The label of `dev`: None if no sector 0-3 starts with "LABELONE"; an error if one does
/// but the label is damaged or not of type "LVM2 001".
pub fn read_label(dev: &dyn BlockRead) -> Result<Option<Label>> {
    for n in 0..4u64 {
        if !fits(n * SECTOR, SECTOR as usize, dev.size()) {
            break;
        }
        let mut s = [0u8; SECTOR as usize];
        dev.read_at(n * SECTOR, &mut s)?;
        if &s[..8] != b"LABELONE" {
            continue;
        }
        return parse_label(&s, n).map(Some);
    }
    Ok(None)
}

fn parse_label(s: &[u8; 512], n: u64) -> Result<Label> {
    let le = Le::new(s, "LVM2 label");
    let at = le.u64(8)?;
    if at != n {
        return Err(Error::Guest(format!(
            "LVM2 label in sector {n} says it lies in sector {at} (damaged?)"
        )));
    }
    let stored = le.u32(16)?;
    let computed = crc(INITIAL_CRC, &s[20..]);
    if stored != computed {
        return Err(Error::Guest(format!(
            "LVM2 label in sector {n}: checksum {stored:#010x} does not match its bytes \
             ({computed:#010x})"
        )));
    }
    let kind = le.bytes(24, 8)?;
    if kind != b"LVM2 001" {
        return Err(Error::Unsupported(format!(
            "LVM label type {:?} in sector {n} is not supported (only \"LVM2 001\")",
            String::from_utf8_lossy(kind)
        )));
    }
    let off = le.u32(20)? as usize;
    let ph = Le::new(s.get(off..).unwrap_or(&[]), "LVM2 PV header");
    let uuid = ph.bytes(0, 32)?;
    if !uuid
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || b"!#".contains(c))
    {
        return Err(Error::Guest(format!(
            "LVM2 PV header in sector {n}: the PV UUID is not text (damaged?)"
        )));
    }
    let uuid = String::from_utf8_lossy(uuid).into_owned();
    let device_size = ph.u64(32)?;
    // Two lists of 16-byte (offset, size) entries, each ended by a zero entry; the sector
    // bounds them.
    let mut at = 40usize;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let (o, l) = (ph.u64(at)?, ph.u64(at + 8)?);
            at += 16;
            if o == 0 && l == 0 {
                break;
            }
            list.push((o, l));
        }
    }
    let [data, mdas] = lists;
    Ok(Label {
        uuid,
        device_size,
        pe_start: data.first().map_or(0, |d| d.0),
        mdas,
    })
}

/// The committed metadata text of the area at `offset` (`size` bytes): None if the area
/// holds none (an orphan PV) or its copy is marked ignored.
pub fn read_mda(dev: &dyn BlockRead, offset: u64, size: u64) -> Result<Option<String>> {
    let what = format!("LVM2 metadata area at byte {offset}");
    let hdr = read_vec(dev, offset, MDA_HEADER_SIZE, MDA_HEADER_SIZE, &what)?;
    let le = Le::new(&hdr, &what);
    let stored = le.u32(0)?;
    let computed = crc(INITIAL_CRC, &hdr[4..]);
    if le.bytes(4, 16)? != MDA_MAGIC {
        return Err(Error::Guest(format!("{what}: no mda header magic")));
    }
    if stored != computed {
        return Err(Error::Guest(format!(
            "{what}: header checksum {stored:#010x} does not match its bytes ({computed:#010x})"
        )));
    }
    let version = le.u32(20)?;
    if version != 1 {
        return Err(Error::Unsupported(format!(
            "{what}: mda header version {version} is not supported (only 1)"
        )));
    }
    let (start, mda_size) = (le.u64(24)?, le.u64(32)?);
    if start != offset {
        return Err(Error::Guest(format!(
            "{what}: the header says the area starts at byte {start}"
        )));
    }
    let room = dev.size().saturating_sub(start);
    if mda_size <= MDA_HEADER_SIZE || (size != 0 && mda_size > size) || mda_size > room {
        return Err(Error::Guest(format!(
            "{what}: area size {mda_size} is not within 513..={} (the PV header's size and \
             the device's end)",
            size.min(room)
        )));
    }
    let (t_off, t_size) = (le.u64(40)?, le.u64(48)?);
    let (t_crc, flags) = (le.u32(56)?, le.u32(60)?);
    if t_off == 0 && t_size == 0 {
        return Ok(None);
    }
    if flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    let ring = mda_size - MDA_HEADER_SIZE;
    if t_size > MAX_TEXT {
        return Err(Error::Guest(format!(
            "{what}: metadata text of {t_size} bytes is more than the {MAX_TEXT} this reader \
             accepts"
        )));
    }
    if t_off < MDA_HEADER_SIZE || t_off >= mda_size || t_size > ring || t_size == 0 {
        return Err(Error::Guest(format!(
            "{what}: metadata text at {t_off} (+{t_size}) lies outside the area ({mda_size} \
             bytes)"
        )));
    }
    // The text, wrapping around to just after the header. start + mda_size lies inside
    // the device (checked above), so these offsets do not overflow.
    let first = t_size.min(mda_size - t_off);
    let mut text = read_vec(dev, start + t_off, first, MAX_TEXT, &what)?;
    if first < t_size {
        let rest = read_vec(
            dev,
            start + MDA_HEADER_SIZE,
            t_size - first,
            MAX_TEXT,
            &what,
        )?;
        text.extend_from_slice(&rest);
    }
    let computed = crc(INITIAL_CRC, &text);
    if computed != t_crc {
        return Err(Error::Guest(format!(
            "{what}: metadata text checksum {t_crc:#010x} does not match its bytes \
             ({computed:#010x})"
        )));
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// A 32-character UUID as LVM prints it: 6-4-4-4-4-4-6 characters joined by dashes.
pub fn dashed(uuid: &str) -> String {
    let mut out = String::with_capacity(38);
    for (i, c) in uuid.chars().enumerate() {
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// A UUID without its dashes, for comparing the label's form with the metadata's.
pub fn bare(uuid: &str) -> String {
    uuid.chars().filter(|&c| c != '-').collect()
}
