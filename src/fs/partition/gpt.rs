//! GUID Partition Table (UEFI specification, chapter 5.3).
//!
//! The header sits at LBA 1 and a backup copy at the last LBA; each has a CRC32 of itself
//! (the CRC field zeroed) and of its partition entry array. The sector size is not stored
//! anywhere, so both 512 and 4096 are tried: the header is where "EFI PART" and a matching
//! CRC are found. A damaged primary (bad signature, CRC, or entry-array CRC) falls back to
//! the backup at the last LBA, with a warning; a damaged backup next to a good primary is
//! only a warning.

use super::{drop_overlaps, types, Partition, PartitionTable, TableKind};
use crate::blockdev::{fits, BlockRead};
use crate::fs::{read_vec, Le};
use crate::{Error, Result};

/// The largest entry array accepted (the usual one is 128 entries × 128 bytes = 16 KiB).
const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// The largest entry accepted (the specification allows 128 × 2^n).
const MAX_ENTRY_SIZE: u32 = 4096;
const SECTOR_SIZES: [u32; 2] = [512, 4096];

struct Header {
    first_usable: u64,
    last_usable: u64,
    alt_lba: u64,
    entry_size: u32,
}

/// A header and its entry array, both checked.
struct Table {
    header: Header,
    entries: Vec<u8>,
}

pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = flate2::Crc::new();
    for p in parts {
        c.update(p);
    }
    c.sum()
}

/// The GPT of a disk whose sector 0 has a protective entry: an error only if neither the
/// primary nor the backup header can be read.
pub(super) fn read(dev: &dyn BlockRead, mut warnings: Vec<String>) -> Result<PartitionTable> {
    let mut reasons: Vec<(u32, String, bool)> = Vec::new();
    for ss in SECTOR_SIZES {
        match load(dev, ss, 1) {
            Ok(t) => {
                if let Err((r, _)) = load(dev, ss, t.header.alt_lba) {
                    warnings.push(format!(
                        "GPT: the backup header at LBA {} is damaged ({r}); the primary is used",
                        t.header.alt_lba
                    ));
                }
                return Ok(build(dev, ss, t, warnings));
            }
            Err((r, signed)) => reasons.push((ss, r, signed)),
        }
    }
    // The reason worth reporting: the sector size whose LBA 1 had the signature.
    let primary = reasons
        .iter()
        .find(|r| r.2)
        .or(reasons.first())
        .map_or_else(String::new, |r| {
            format!("{} (with {}-byte sectors)", r.1, r.0)
        });
    for ss in SECTOR_SIZES {
        let sectors = dev.size() / ss as u64;
        if sectors < 3 {
            continue;
        }
        let last = sectors - 1;
        if let Ok(t) = load(dev, ss, last) {
            warnings.push(format!(
                "GPT: the primary header is damaged: {primary}; the backup header at LBA \
                 {last} is used"
            ));
            return Ok(build(dev, ss, t, warnings));
        }
    }
    Err(Error::Guest(format!(
        "GPT: the disk has a protective MBR but neither GPT header can be read: primary \
         (LBA 1): {primary}; no valid backup at the last LBA"
    )))
}

/// A GPT without a protective MBR (sector 0 wiped or not an MBR): read, with a warning,
/// only when the primary header is intact.
pub(super) fn read_unprotected(dev: &dyn BlockRead) -> Result<Option<PartitionTable>> {
    for ss in SECTOR_SIZES {
        if let Ok(t) = load(dev, ss, 1) {
            let w = vec![
                "GPT: sector 0 holds no protective MBR; the intact GPT header at LBA 1 is used"
                    .to_string(),
            ];
            return Ok(Some(build(dev, ss, t, w)));
        }
    }
    Ok(None)
}

/// Reads and checks the header at `lba` and its entry array. The error says why it is
/// not usable, and whether the "EFI PART" signature was there.
fn load(dev: &dyn BlockRead, ss: u32, lba: u64) -> std::result::Result<Table, (String, bool)> {
    let unsigned = |s: String| (s, false);
    let ss64 = ss as u64;
    let at = lba
        .checked_mul(ss64)
        .filter(|&at| fits(at, ss as usize, dev.size()))
        .ok_or_else(|| unsigned(format!("LBA {lba} lies past the end of the disk")))?;
    let mut sec = vec![0u8; ss as usize];
    dev.read_at(at, &mut sec)
        .map_err(|e| unsigned(e.to_string()))?;
    if sec.get(..8) != Some(b"EFI PART") {
        return Err(unsigned(format!("no \"EFI PART\" signature at LBA {lba}")));
    }
    let signed = |s: String| (s, true);
    let le = Le::new(&sec, "GPT header");
    let f = |r: Result<u64>| r.map_err(|e| signed(e.to_string()));
    let hsize = f(le.u32(12).map(u64::from))?;
    if !(92..=ss64).contains(&hsize) {
        return Err(signed(format!(
            "header size {hsize} is not within 92..={ss}"
        )));
    }
    let stored = f(le.u32(16).map(u64::from))? as u32;
    // hsize <= ss = sec.len(), checked above.
    let mut h = sec[..hsize as usize].to_vec();
    h[16..20].fill(0);
    let computed = crc32(&[&h]);
    if computed != stored {
        return Err(signed(format!(
            "header CRC32 {stored:#010x} does not match its bytes ({computed:#010x})"
        )));
    }
    let my_lba = f(le.u64(24))?;
    if my_lba != lba {
        return Err(signed(format!(
            "header says it lies at LBA {my_lba}, not {lba}"
        )));
    }
    let header = Header {
        alt_lba: f(le.u64(32))?,
        first_usable: f(le.u64(40))?,
        last_usable: f(le.u64(48))?,
        entry_size: f(le.u32(84).map(u64::from))? as u32,
    };
    let entries_lba = f(le.u64(72))?;
    let count = f(le.u32(80).map(u64::from))?;
    let entries_crc = f(le.u32(88).map(u64::from))? as u32;
    if header.first_usable > header.last_usable {
        return Err(signed(format!(
            "usable area LBA {}..={} is empty",
            header.first_usable, header.last_usable
        )));
    }
    let esize = header.entry_size;
    if esize < 128 || esize % 8 != 0 || esize > MAX_ENTRY_SIZE {
        return Err(signed(format!(
            "entry size {esize} is not a multiple of 8 within 128..={MAX_ENTRY_SIZE}"
        )));
    }
    let bytes = count * esize as u64; // both came from u32: no overflow in u64
    if bytes > MAX_ENTRY_BYTES {
        return Err(signed(format!(
            "{count} entries of {esize} bytes is more than the {MAX_ENTRY_BYTES} bytes \
             this reader accepts"
        )));
    }
    let eat = entries_lba
        .checked_mul(ss64)
        .filter(|&at| fits(at, bytes as usize, dev.size()))
        .ok_or_else(|| {
            signed(format!(
                "entry array at LBA {entries_lba} (+{bytes} bytes) lies past the end of the disk"
            ))
        })?;
    let entries = read_vec(dev, eat, bytes, MAX_ENTRY_BYTES, "GPT entry array")
        .map_err(|e| signed(e.to_string()))?;
    let computed = crc32(&[&entries]);
    if computed != entries_crc {
        return Err(signed(format!(
            "entry array CRC32 {entries_crc:#010x} does not match its bytes ({computed:#010x})"
        )));
    }
    Ok(Table { header, entries })
}

/// The partitions of a checked table: unused entries skipped, impossible ones dropped with
/// a warning.
fn build(dev: &dyn BlockRead, ss: u32, t: Table, mut warnings: Vec<String>) -> PartitionTable {
    let ss64 = ss as u64;
    let disk = dev.size();
    let h = &t.header;
    let mut parts = Vec::new();
    for (i, e) in t.entries.chunks_exact(h.entry_size as usize).enumerate() {
        let Some(entry) = parse_entry(e) else {
            continue;
        };
        let number = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
        let (first, last) = (entry.first, entry.last);
        if last < first {
            warnings.push(format!(
                "GPT: partition {number} ends (LBA {last}) before it starts (LBA {first}); dropped"
            ));
            continue;
        }
        let start = first.checked_mul(ss64);
        let len = (last - first)
            .checked_add(1)
            .and_then(|n| n.checked_mul(ss64));
        let (start, len) = match (start, len) {
            (Some(s), Some(l)) if s.checked_add(l).is_some_and(|end| end <= disk) => (s, l),
            _ => {
                warnings.push(format!(
                    "GPT: partition {number} (LBA {first}..={last}) lies outside the disk \
                     ({disk} bytes); dropped"
                ));
                continue;
            }
        };
        if first < h.first_usable || last > h.last_usable {
            warnings.push(format!(
                "GPT: partition {number} (LBA {first}..={last}) lies outside the usable \
                 area LBA {}..={} the header declares",
                h.first_usable, h.last_usable
            ));
        }
        parts.push(Partition {
            number,
            start,
            len,
            type_name: types::gpt_name(&entry.type_id).to_string(),
            type_id: entry.type_id,
            name: entry.name,
            extended: false,
            guid: Some(entry.guid),
            bootable: false,
        });
    }
    let partitions = drop_overlaps(parts, "GPT", &mut warnings);
    PartitionTable {
        kind: TableKind::Gpt,
        sector_size: ss,
        partitions,
        warnings,
    }
}

struct Entry {
    type_id: String,
    guid: String,
    first: u64,
    last: u64,
    name: Option<String>,
}

/// One entry of the array, None if unused (a zero type GUID) or shorter than 128 bytes.
fn parse_entry(e: &[u8]) -> Option<Entry> {
    let le = Le::new(e, "GPT entry");
    let ty: &[u8; 16] = le.bytes(0, 16).ok()?.try_into().ok()?;
    if ty.iter().all(|&b| b == 0) {
        return None;
    }
    let id: &[u8; 16] = le.bytes(16, 16).ok()?.try_into().ok()?;
    let name: Vec<u16> = le
        .bytes(56, 72)
        .ok()?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let name: String = char::decode_utf16(name)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    Some(Entry {
        type_id: guid(ty),
        guid: guid(id),
        first: le.u64(32).ok()?,
        last: le.u64(40).ok()?,
        name: (!name.is_empty()).then_some(name),
    })
}

/// A GUID in its text form: the first three fields are stored little-endian, the last
/// two as bytes.
pub(super) fn guid(b: &[u8; 16]) -> String {
    let hex = |r: &[u8]| r.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let rev = |r: &[u8]| {
        r.iter()
            .rev()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    format!(
        "{}-{}-{}-{}-{}",
        rev(&b[0..4]),
        rev(&b[4..6]),
        rev(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    )
}
