//! VHD (Virtual PC / Hyper-V generation 1, qemu's "vpc"), from Microsoft's published
//! "Virtual Hard Disk Image Format Specification": a 512-byte footer ("conectix") ends the
//! file. A fixed disk is the raw data followed by the footer; a dynamic disk has a copy of
//! the footer at the start, a dynamic header ("cxsparse") and a block allocation table
//! (BAT) whose blocks each start with a sector bitmap: a clear bit means the sector reads
//! as zeros. Differencing disks are refused (their parent locators are platform-encoded
//! paths; convert them with qemu-img first).
//!
//! The guest size follows qemu, so that a restore equals `qemu-img convert -O raw`: images
//! written by Virtual PC or old qemu ("vpc ", "qemu" creator) are sized by their CHS
//! geometry, everything else (Hyper-V, Azure, qemu with force_size) by `current_size`.
//!
//! BAT entries and bitmaps are read on demand for the blocks a call touches.

use super::host::{be16, be32, be64, HostFile};
use super::layered::{push, Extent, Kind, Layered, Layout};
use super::DiskImage;
use crate::Result;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SECTOR: u64 = 512;
const FOOTER: u64 = 512;
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;
/// CHS geometry 65535/16/255, which means "use current_size" whatever the creator.
const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

pub(super) struct Vhd {
    file: HostFile,
    size: u64,
    dynamic: Option<Dynamic>,
}

struct Dynamic {
    bat_offset: u64,
    block: u64,
    /// Bytes of the sector bitmap before each block's data, padded to whole sectors.
    bitmap_bytes: u64,
}

/// The one's complement of the byte sum, with the checksum field itself counted as zero.
fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |a, (_, &x)| a.wrapping_add(x as u32));
    !sum
}

fn footer_ok(b: &[u8]) -> bool {
    b.starts_with(b"conectix") && checksum(b, 64) == be32(b, 64)
}

/// True if `f` is a regular file ending in a valid VHD footer. A fixed VHD has no
/// header, so this is the only way to tell it from a raw image; a dynamic VHD whose
/// leading footer copy is damaged is caught here too instead of being read as raw.
pub(super) fn has_footer(f: &File) -> bool {
    let Ok(meta) = f.metadata() else { return false };
    if !meta.is_file() || meta.len() < 2 * FOOTER {
        return false;
    }
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, meta.len() - FOOTER).is_ok()
        && footer_ok(&b)
        && matches!(be32(&b, 60), TYPE_FIXED | TYPE_DYNAMIC | TYPE_DIFFERENCING)
}

pub(super) fn open(path: &Path) -> Result<Box<dyn DiskImage>> {
    let file = HostFile::open(path)?;
    let vhd = Vhd::parse(file)?;
    Ok(Box::new(Layered::new("vhd", vhd, None)))
}

impl Vhd {
    fn parse(file: HostFile) -> Result<Vhd> {
        if file.len() < FOOTER {
            return Err(file.bad("too short for a VHD footer (truncated?)"));
        }
        // Dynamic disks keep a copy of the footer at the start; the one at the end may be
        // lost if the file was truncated. Use the first valid copy, like qemu.
        let mut start = [0u8; 512];
        let mut end = [0u8; 512];
        file.read_exact_at(0, &mut start, &|| "VHD footer copy".into())?;
        file.read_exact_at(file.len() - FOOTER, &mut end, &|| "VHD footer".into())?;
        let footer = if footer_ok(&start) {
            start
        } else if footer_ok(&end) {
            end
        } else if start.starts_with(b"conectix") || end.starts_with(b"conectix") {
            return Err(file.bad("the VHD footer's checksum does not match (damaged footer)"));
        } else {
            return Err(file.bad("no VHD footer at the start or the end of the file (truncated?)"));
        };
        let version = be32(&footer, 12);
        if version >> 16 != 1 {
            return Err(file.unsupported(format_args!(
                "VHD format version {version:#x} is not supported (1.x is)"
            )));
        }
        let current = be64(&footer, 48);
        let chs = be16(&footer, 56) as u64 * footer[58] as u64 * footer[59] as u64;
        let legacy = &footer[28..32] == b"vpc " || &footer[28..32] == b"qemu";
        let size = if legacy && chs != MAX_GEOMETRY_SECTORS {
            chs * SECTOR
        } else {
            current
        };
        let disk_type = be32(&footer, 60);
        let dynamic = match disk_type {
            TYPE_FIXED => {
                if size > file.len() - FOOTER {
                    return Err(file.bad(format_args!(
                        "fixed VHD of {size} bytes has only {} bytes of data (truncated?)",
                        file.len() - FOOTER
                    )));
                }
                None
            }
            TYPE_DYNAMIC => Some(Self::dynamic_header(&file, be64(&footer, 16), size)?),
            TYPE_DIFFERENCING => {
                return Err(file.unsupported(
                    "is a differencing VHD, which cairn does not read yet; merge or convert \
                     it first: qemu-img convert -f vpc -O vpc CHILD.vhd full.vhd",
                ))
            }
            t => return Err(file.bad(format_args!("unknown VHD disk type {t}"))),
        };
        Ok(Vhd {
            file,
            size,
            dynamic,
        })
    }

    fn dynamic_header(file: &HostFile, at: u64, size: u64) -> Result<Dynamic> {
        let mut h = [0u8; 1024];
        file.read_exact_at(at, &mut h, &|| "VHD dynamic disk header".into())?;
        if !h.starts_with(b"cxsparse") {
            return Err(file.bad(format_args!(
                "no dynamic disk header (\"cxsparse\") at offset {at}"
            )));
        }
        if checksum(&h, 36) != be32(&h, 36) {
            return Err(
                file.bad("the dynamic disk header's checksum does not match (damaged header)")
            );
        }
        let bat_offset = be64(&h, 16);
        let entries = be32(&h, 28) as u64;
        let block = be32(&h, 32) as u64;
        if !block.is_power_of_two() || !(SECTOR * 8..=256 << 20).contains(&block) {
            return Err(file.bad(format_args!(
                "VHD block size {block} is invalid (damaged header?)"
            )));
        }
        let needed = size.div_ceil(block);
        if entries < needed {
            return Err(file.bad(format_args!(
                "the block allocation table has {entries} entries but a {size}-byte disk needs {needed}"
            )));
        }
        if bat_offset.saturating_add(needed * 4) > file.len() {
            return Err(file.bad(format_args!(
                "the block allocation table at offset {bat_offset} lies past the end of the file (truncated?)"
            )));
        }
        let bitmap_bytes = (block / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
        Ok(Dynamic {
            bat_offset,
            block,
            bitmap_bytes,
        })
    }

    fn map_dynamic(&self, d: &Dynamic, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        let first = range.start / d.block;
        let last = (range.end - 1) / d.block;
        let raw = self
            .file
            .read_vec(d.bat_offset + first * 4, (last - first + 1) * 4, &|| {
                "block allocation table".into()
            })?;
        for (i, e) in raw.chunks_exact(4).enumerate() {
            let b = first + i as u64;
            let bstart = b * d.block;
            let clip = bstart.max(range.start)..(bstart + d.block).min(range.end);
            let entry = be32(e, 0);
            if entry == UNALLOCATED {
                push(out, clip, Kind::Zero);
                continue;
            }
            let bitmap_at = entry as u64 * SECTOR;
            let data_at = bitmap_at + d.bitmap_bytes;
            let used = d.block.min(self.size - bstart);
            if data_at.saturating_add(used) > self.file.len() {
                return Err(self.file.bad(format_args!(
                    "block {b} (guest offset {bstart}) at offset {bitmap_at} points past the end of the file at {} bytes (truncated?)",
                    self.file.len()
                )));
            }
            // Sector bitmap, most significant bit first: 1 = stored, 0 = zeros.
            let s0 = (clip.start - bstart) / SECTOR;
            let s1 = (clip.end - 1 - bstart) / SECTOR;
            let bits = self
                .file
                .read_vec(bitmap_at + s0 / 8, s1 / 8 - s0 / 8 + 1, &|| {
                    format!("sector bitmap of block {b}")
                })?;
            for s in s0..=s1 {
                let byte = bits.get(((s / 8) - s0 / 8) as usize).copied().unwrap_or(0);
                let set = byte & (0x80 >> (s % 8)) != 0;
                let sstart = bstart + s * SECTOR;
                let r = sstart.max(clip.start)..(sstart + SECTOR).min(clip.end);
                let kind = if set {
                    Kind::Data {
                        file: 0,
                        offset: data_at + (r.start - bstart),
                    }
                } else {
                    Kind::Zero
                };
                push(out, r, kind);
            }
        }
        Ok(())
    }
}

impl Layout for Vhd {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        match &self.dynamic {
            None => {
                push(
                    out,
                    range.clone(),
                    Kind::Data {
                        file: 0,
                        offset: range.start,
                    },
                );
                Ok(())
            }
            Some(d) => self.map_dynamic(d, range, out),
        }
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
    fn checksum_skips_its_own_field() {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(b"conectix");
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        assert!(footer_ok(&b));
        b[100] = 1;
        assert!(!footer_ok(&b));
    }
}
