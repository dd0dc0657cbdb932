//! VHDX (Hyper-V generation 2), from Microsoft's published [MS-VHDX] specification: two
//! checksummed headers (the one with the higher sequence number is current), two copies
//! of a region table locating the block allocation table (BAT) and the metadata region,
//! and payload blocks of 1 to 256 MiB. BAT entries of payload blocks are interleaved with
//! sector-bitmap entries (one after every "chunk ratio" payload entries).
//!
//! Fixed and dynamic disks are read; differencing disks (HasParent) are refused, as are
//! files with an unreplayed log (they were not closed cleanly: their metadata may be stale
//! until Hyper-V or `qemu-img check -r all` replays it). BAT entries are read on demand.

use super::host::{crc32c, le16, le32, le64, HostFile};
use super::layered::{push, Extent, Kind, Layered, Layout};
use super::DiskImage;
use crate::Result;
use std::ops::Range;
use std::path::Path;

const KIB64: u64 = 64 << 10;
const MIB: u64 = 1 << 20;

// BAT entry states for payload blocks.
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;

const BAT_REGION: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_REGION: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const VIRTUAL_DISK_ID: &str = "BECA12AB-B2E6-4523-93EF-C309E000C746";
const LOGICAL_SECTOR_SIZE: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const PHYSICAL_SECTOR_SIZE: &str = "CDA348C7-445D-4471-9CC9-E9885251C556";
const PARENT_LOCATOR: &str = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";

/// The on-disk bytes of a GUID written as text: the first three groups little-endian,
/// the rest as written. Malformed text gives zeros (the inputs are the constants above).
fn guid(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b'-')
        .map(|b| (b as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    let mut t = [0u8; 16];
    for (i, p) in hex.chunks_exact(2).take(16).enumerate() {
        t[i] = p[0] << 4 | p[1];
    }
    let mut g = t;
    g[0..4].copy_from_slice(&[t[3], t[2], t[1], t[0]]);
    g[4..6].copy_from_slice(&[t[5], t[4]]);
    g[6..8].copy_from_slice(&[t[7], t[6]]);
    g
}

pub(super) struct Vhdx {
    file: HostFile,
    size: u64,
    block: u64,
    chunk_ratio: u64,
    bat_offset: u64,
}

pub(super) fn open(path: &Path) -> Result<Box<dyn DiskImage>> {
    let file = HostFile::open(path)?;
    let v = Vhdx::parse(file)?;
    Ok(Box::new(Layered::new("vhdx", v, None)))
}

/// A region or metadata item: where it is and whether a reader must understand it.
struct Item {
    id: [u8; 16],
    offset: u64,
    len: u64,
    required: bool,
}

impl Vhdx {
    fn parse(file: HostFile) -> Result<Vhdx> {
        let mut sig = [0u8; 8];
        file.read_exact_at(0, &mut sig, &|| "file identifier".into())?;
        if &sig != b"vhdxfile" {
            return Err(file.bad("not a VHDX file (no \"vhdxfile\" identifier)"));
        }
        Self::check_header(&file)?;
        let regions = Self::regions(&file)?;
        let mut bat = None;
        let mut meta = None;
        for r in &regions {
            if r.id == guid(BAT_REGION) {
                bat = Some(r);
            } else if r.id == guid(METADATA_REGION) {
                meta = Some(r);
            } else if r.required {
                return Err(file.unsupported("has a required region cairn does not know; convert it with qemu-img convert -O vhdx"));
            }
        }
        let (Some(bat), Some(meta)) = (bat, meta) else {
            return Err(file.bad("the region table lacks the BAT or the metadata region"));
        };
        for (r, what) in [(bat, "BAT region"), (meta, "metadata region")] {
            if r.offset < MIB || r.offset % MIB != 0 || r.offset.saturating_add(r.len) > file.len()
            {
                return Err(file.bad(format_args!(
                    "the {what} (offset {}, {} bytes) is misplaced or lies past the end of the file at {} bytes (truncated?)",
                    r.offset,
                    r.len,
                    file.len()
                )));
            }
        }

        // Metadata items.
        let table = file.read_vec(meta.offset, KIB64.min(meta.len), &|| {
            "metadata table".into()
        })?;
        if !table.starts_with(b"metadata") {
            return Err(file.bad("the metadata region has no \"metadata\" table"));
        }
        let count = le16(&table, 10) as usize;
        if count > 2047 {
            return Err(file.bad(format_args!("the metadata table claims {count} entries")));
        }
        let mut block = None;
        let mut size = None;
        let mut lss = None;
        for i in 0..count {
            let e = table.get(32 + i * 32..64 + i * 32).unwrap_or(&[]);
            let mut id = [0u8; 16];
            id.copy_from_slice(e.get(..16).unwrap_or(&[0u8; 16]));
            let item = Item {
                id,
                offset: le32(e, 16) as u64,
                len: le32(e, 20) as u64,
                required: le32(e, 24) & 4 != 0,
            };
            if item.len == 0 {
                continue;
            }
            if item.offset < KIB64 || item.offset.saturating_add(item.len) > meta.len {
                return Err(file.bad(format_args!(
                    "metadata item {i} lies outside the metadata region"
                )));
            }
            let read = |n: u64| {
                file.read_vec(meta.offset + item.offset, n.min(item.len), &|| {
                    format!("metadata item {i}")
                })
            };
            if id == guid(FILE_PARAMETERS) {
                let v = read(8)?;
                if le32(&v, 4) & 2 != 0 {
                    return Err(file.unsupported(
                        "is a differencing VHDX, which cairn does not read yet; merge or convert \
                         it first: qemu-img convert -f vhdx -O vhdx CHILD.vhdx full.vhdx",
                    ));
                }
                block = Some(le32(&v, 0) as u64);
            } else if id == guid(VIRTUAL_DISK_SIZE) {
                size = Some(le64(&read(8)?, 0));
            } else if id == guid(LOGICAL_SECTOR_SIZE) {
                lss = Some(le32(&read(4)?, 0) as u64);
            } else if id == guid(PARENT_LOCATOR) {
                return Err(file.unsupported(
                    "has a parent locator (a differencing VHDX), which cairn does not read yet",
                ));
            } else if id == guid(VIRTUAL_DISK_ID) || id == guid(PHYSICAL_SECTOR_SIZE) {
                // Not needed to read the disk.
            } else if item.required {
                return Err(file.unsupported(format_args!(
                    "metadata item {i} is required but unknown to cairn; convert with qemu-img convert -O vhdx"
                )));
            }
        }
        let (Some(block), Some(size), Some(lss)) = (block, size, lss) else {
            return Err(file.bad(
                "the metadata lacks the file parameters, virtual disk size or logical sector size",
            ));
        };
        if !block.is_power_of_two() || !(MIB..=256 * MIB).contains(&block) {
            return Err(file.bad(format_args!(
                "block size {block} is invalid (1 to 256 MiB, a power of two)"
            )));
        }
        if lss != 512 && lss != 4096 {
            return Err(file.bad(format_args!(
                "logical sector size {lss} is invalid (512 or 4096)"
            )));
        }
        if size > 64 << 40 {
            return Err(file.bad(format_args!(
                "virtual disk size {size} is above the 64 TiB VHDX limit"
            )));
        }
        let chunk_ratio = ((1u64 << 23) * lss) / block;
        let blocks = size.div_ceil(block);
        let entries = if blocks == 0 {
            0
        } else {
            blocks + (blocks - 1) / chunk_ratio
        };
        if entries * 8 > bat.len {
            return Err(file.bad(format_args!(
                "the BAT has room for {} entries but a {size}-byte disk needs {entries}",
                bat.len / 8
            )));
        }
        Ok(Vhdx {
            size,
            block,
            chunk_ratio,
            bat_offset: bat.offset,
            file,
        })
    }

    /// Picks the current header and refuses what cannot be read safely.
    fn check_header(file: &HostFile) -> Result<()> {
        let mut best: Option<(u64, [u8; 4096])> = None;
        for at in [KIB64, 2 * KIB64] {
            let mut h = [0u8; 4096];
            if file
                .read_exact_at(at, &mut h, &|| "VHDX header".into())
                .is_err()
            {
                continue;
            }
            if !h.starts_with(b"head") || !crc_ok(&h, 4) {
                continue;
            }
            let seq = le64(&h, 8);
            if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                best = Some((seq, h));
            }
        }
        let Some((_, h)) = best else {
            return Err(file.bad("neither VHDX header is valid (damaged or truncated file)"));
        };
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(file.unsupported(
                "has a log that was never replayed (the disk was not closed cleanly); attach it \
                 once in Hyper-V or run qemu-img check -r all on it, then back it up",
            ));
        }
        let version = le16(&h, 66);
        if version != 1 {
            return Err(file.unsupported(format_args!(
                "VHDX version {version} is not supported (1 is)"
            )));
        }
        Ok(())
    }

    fn regions(file: &HostFile) -> Result<Vec<Item>> {
        for at in [3 * KIB64, 4 * KIB64] {
            let Ok(t) = file.read_vec(at, KIB64, &|| "region table".into()) else {
                continue;
            };
            if !t.starts_with(b"regi") || !crc_ok(&t, 4) {
                continue;
            }
            let count = le32(&t, 8) as usize;
            if count > 2047 {
                continue;
            }
            return Ok((0..count)
                .map(|i| {
                    let e = t.get(16 + i * 32..48 + i * 32).unwrap_or(&[]);
                    let mut id = [0u8; 16];
                    id.copy_from_slice(e.get(..16).unwrap_or(&[0u8; 16]));
                    Item {
                        id,
                        offset: le64(e, 16),
                        len: le32(e, 24) as u64,
                        required: le32(e, 28) & 1 != 0,
                    }
                })
                .collect());
        }
        Err(file.bad("neither VHDX region table is valid (damaged or truncated file)"))
    }
}

/// CRC-32C of `b` with the 4-byte checksum field at `field` taken as zero.
fn crc_ok(b: &[u8], field: usize) -> bool {
    let mut copy = b.to_vec();
    if let Some(f) = copy.get_mut(field..field + 4) {
        f.fill(0);
    }
    crc32c(&copy) == le32(b, field)
}

impl Layout for Vhdx {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        let first = range.start / self.block;
        let last = (range.end - 1) / self.block;
        let index = |b: u64| b + b / self.chunk_ratio;
        let (i0, i1) = (index(first), index(last));
        let raw = self
            .file
            .read_vec(self.bat_offset + i0 * 8, (i1 - i0 + 1) * 8, &|| {
                "BAT".into()
            })?;
        for b in first..=last {
            let e = le64(&raw, ((index(b) - i0) * 8) as usize);
            let bstart = b * self.block;
            let clip = bstart.max(range.start)..(bstart + self.block).min(range.end);
            let kind = match e & 7 {
                NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED => Kind::Zero,
                FULLY_PRESENT => {
                    let at = e & !(MIB - 1);
                    let used = self.block.min(self.size - bstart);
                    if at < MIB || at.saturating_add(used) > self.file.len() {
                        return Err(self.file.bad(format_args!(
                            "payload block {b} (guest offset {bstart}) at offset {at} points past the end of the file at {} bytes (truncated?)",
                            self.file.len()
                        )));
                    }
                    Kind::Data {
                        file: 0,
                        offset: at + (clip.start - bstart),
                    }
                }
                PARTIALLY_PRESENT => {
                    let why = "only differencing disks may have partially present blocks";
                    return Err(self.file.bad(format_args!("payload block {b}: {why}")));
                }
                s => {
                    return Err(self
                        .file
                        .bad(format_args!("payload block {b} has invalid BAT state {s}")))
                }
            };
            push(out, clip, kind);
        }
        Ok(())
    }

    fn file(&self, _i: usize) -> &HostFile {
        &self.file
    }

    fn files(&self) -> Vec<&HostFile> {
        vec![&self.file]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_bytes_are_mixed_endian() {
        assert_eq!(
            guid(BAT_REGION),
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }
}
