//! qcow2 versions 2 and 3 (the QEMU copy-on-write format), read from its public
//! specification: a two-level table (L1 → L2 → cluster) maps guest clusters to host
//! clusters, which may be compressed (deflate or zstd), marked zero (v3), or absent (then
//! the backing file shows through). Extended L2 entries (subclusters) are supported.
//!
//! The L1 table is loaded at open (it is small: 8 bytes per 512 MiB of guest with 64 KiB
//! clusters); L2 entries are read on demand, only the slice a call needs, so memory does
//! not grow with the image and no cache has to be kept coherent. Encrypted images and
//! external data files are refused with a message saying how to convert them.

use super::host::{be32, be64, HostFile};
use super::layered::{push, Codec, Compressed, Kind, Layered, Layout};
use super::DiskImage;
use crate::{Error, Result};
use std::ops::Range;
use std::path::Path;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bits of an L1/L2 entry that hold a cluster-aligned host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;

/// Incompatible feature bits (header offset 72, v3).
fn cluster_size(bits: u32) -> u64 {
    1u64 << bits.min(63)
}

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

pub(super) struct Qcow2 {
    file: HostFile,
    size: u64,
    cluster_bits: u32,
    /// L2 entry size: 8, or 16 with extended L2 entries.
    entry_bytes: u64,
    l1: Vec<u64>,
    codec: Codec,
    /// Extended L2 entries: each cluster has 32 subclusters with their own state.
    extended: bool,
}

/// The parts of the header that name other files.
struct Links {
    backing: Option<String>,
    backing_format: Option<String>,
}

pub(super) fn open(path: &Path, above: &super::Chain) -> Result<Box<dyn DiskImage>> {
    let chain = super::descend(path, above)?;
    let file = HostFile::open(path)?;
    let (q, links) = Qcow2::parse(file)?;
    let backing = match links.backing {
        None => None,
        Some(name) => {
            let img = super::open_backing(path, &name, links.backing_format.as_deref(), &chain)
                .map_err(|e| {
                    let msg = format!(
                        "{}: its backing file {name} cannot be used: {e}",
                        path.display()
                    );
                    match e {
                        Error::Usage(_) => Error::Usage(msg),
                        _ => Error::Other(msg),
                    }
                })?;
            Some(img)
        }
    };
    Ok(Box::new(Layered::new("qcow2", q, backing)))
}

/// The header extensions (type, offset of the data, length), which live between the
/// header and the end of the first cluster.
pub(super) fn extensions(
    file: &HostFile,
    cluster: u64,
    header_len: u64,
) -> Result<Vec<(u32, u64, u64)>> {
    let end = cluster.min(file.len());
    let mut out = Vec::new();
    let mut pos = header_len;
    while pos + 8 <= end {
        let mut eh = [0u8; 8];
        file.read_exact_at(pos, &mut eh, &|| "qcow2 header extension".into())?;
        let (ty, len) = (be32(&eh, 0), be32(&eh, 4) as u64);
        if ty == EXT_END {
            break;
        }
        let data_end = pos + 8 + len;
        if data_end > end {
            return Err(file.bad(format_args!(
                "qcow2 header extension {ty:#x} at {pos} runs past the first cluster"
            )));
        }
        out.push((ty, pos + 8, len));
        pos = data_end.div_ceil(8) * 8;
    }
    Ok(out)
}

impl Qcow2 {
    fn parse(file: HostFile) -> Result<(Qcow2, Links)> {
        let mut h = [0u8; 112];
        let hlen = (h.len() as u64).min(file.len()) as usize;
        file.read_exact_at(0, &mut h[..hlen], &|| "qcow2 header".into())?;
        if hlen < 72 || &h[0..4] != MAGIC {
            return Err(file.bad("not a qcow2 image (bad magic or header shorter than 72 bytes)"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(file.unsupported(format_args!(
                "qcow2 version {version} is not supported (only 2 and 3); convert it with \
                 qemu-img convert -O qcow2"
            )));
        }
        let backing_offset = be64(&h, 8);
        let backing_len = be32(&h, 16) as u64;
        let cluster_bits = be32(&h, 20);
        let size = be64(&h, 24);
        let crypt = be32(&h, 32);
        let l1_size = be32(&h, 36) as u64;
        let l1_offset = be64(&h, 40);
        if crypt != 0 {
            let how = match crypt {
                1 => "AES",
                2 => "LUKS",
                _ => "an unknown method",
            };
            return Err(file.unsupported(format_args!(
                "is an encrypted qcow2 image ({how}); cairn cannot read encrypted images. \
                 Back up a decrypted copy (qemu-img convert --object secret,... \
                 --image-opts ... -O qcow2) or the guest's block device instead"
            )));
        }
        if !(9..=21).contains(&cluster_bits) {
            return Err(file.bad(format_args!(
                "cluster_bits {cluster_bits} is outside 9..=21 (damaged header?)"
            )));
        }
        let (incompat, header_len, compression_type) = if version == 3 {
            if hlen < 104 {
                return Err(file.bad("qcow2 v3 header is shorter than 104 bytes (truncated?)"));
            }
            let header_len = be32(&h, 100) as u64;
            if header_len < 104 || header_len > cluster_size(cluster_bits) {
                return Err(file.bad(format_args!("qcow2 header_length {header_len} is invalid")));
            }
            let ct = if header_len > 104 { h[104] } else { 0 };
            (be64(&h, 72), header_len, ct)
        } else {
            (0, 72, 0)
        };
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(file.bad(
                "qemu marked this qcow2 image corrupt; repair it with qemu-img check -r all \
                 before backing it up",
            ));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(file.unsupported(
                "this qcow2 image keeps its data in an external data file, which cairn does \
                 not read; back up the data file (it is a raw image) or convert with \
                 qemu-img convert -O qcow2",
            ));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if incompat & !known != 0 {
            return Err(file.unsupported(format_args!(
                "qcow2 incompatible feature bits {:#x} are unknown to cairn; convert the image \
                 with qemu-img convert -O qcow2",
                incompat & !known
            )));
        }
        let codec = if incompat & INCOMPAT_COMPRESSION != 0 {
            match compression_type {
                0 => Codec::Deflate,
                1 => Codec::Zstd,
                t => {
                    return Err(file.unsupported(format_args!("unknown qcow2 compression type {t}")))
                }
            }
        } else {
            Codec::Deflate
        };
        let extended = incompat & INCOMPAT_EXTL2 != 0;
        if extended && cluster_bits < 14 {
            return Err(file.bad("extended L2 entries need clusters of at least 16 KiB"));
        }
        let cluster = 1u64 << cluster_bits;
        let entry_bytes = if extended { 16 } else { 8 };
        let l2_entries = cluster / entry_bytes;

        let links = Self::read_links(&file, cluster, header_len, backing_offset, backing_len)?;

        // Every guest cluster needs an L1 slot.
        let per_l1 = cluster * l2_entries;
        let needed = size.div_ceil(per_l1);
        if l1_size < needed {
            return Err(file.bad(format_args!(
                "L1 table has {l1_size} entries but a {size}-byte disk needs {needed} (damaged header?)"
            )));
        }
        let l1 = if needed == 0 {
            Vec::new()
        } else {
            if l1_offset % cluster != 0 {
                return Err(file.bad(format_args!(
                    "L1 table offset {l1_offset} is not cluster-aligned"
                )));
            }
            let raw = file.read_vec(l1_offset, needed * 8, &|| "L1 table".into())?;
            raw.chunks_exact(8).map(|c| be64(c, 0)).collect()
        };
        let q = Qcow2 {
            file,
            size,
            cluster_bits,
            entry_bytes,
            l1,
            codec,
            extended,
        };
        Ok((q, links))
    }

    /// Backing file name and format (header extension), and the refusal of external data
    /// files named by extension.
    fn read_links(
        file: &HostFile,
        cluster: u64,
        header_len: u64,
        boff: u64,
        blen: u64,
    ) -> Result<Links> {
        let mut links = Links {
            backing: None,
            backing_format: None,
        };
        if boff != 0 {
            if blen == 0 || blen > 1023 {
                return Err(file.bad(format_args!("backing file name length {blen} is invalid")));
            }
            let name = file.read_vec(boff, blen, &|| "backing file name".into())?;
            let name =
                String::from_utf8(name).map_err(|_| file.bad("backing file name is not UTF-8"))?;
            if name.starts_with("json:") || name.contains("://") {
                return Err(file.unsupported(format_args!(
                    "backing file {name} is not a plain file name; cairn follows backing files \
                     on local disks only"
                )));
            }
            links.backing = Some(name);
        }
        for (ty, pos, len) in extensions(file, cluster, header_len)? {
            match ty {
                EXT_BACKING_FORMAT => {
                    let f = file.read_vec(pos, len, &|| "backing format extension".into())?;
                    let f = String::from_utf8_lossy(&f)
                        .trim_end_matches('\0')
                        .to_string();
                    links.backing_format = Some(f);
                }
                EXT_DATA_FILE => {
                    return Err(file.unsupported(
                        "this qcow2 image names an external data file, which cairn does not \
                         read; back up the data file (a raw image) instead",
                    ))
                }
                _ => {}
            }
        }
        Ok(links)
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Maps the guest clusters `first..=last` that share L1 entry `l1_index`.
    fn map_l2(&self, l1_index: usize, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        let cs = self.cluster();
        let l2_entries = cs / self.entry_bytes;
        let entry = self.l1.get(l1_index).copied().unwrap_or(0);
        let l2_offset = entry & OFFSET_MASK;
        if l2_offset == 0 {
            push(out, range, Kind::Backing);
            return Ok(());
        }
        if l2_offset % cs != 0 {
            return Err(self.file.bad(format_args!(
                "L1 entry {l1_index} points to offset {l2_offset}, which is not cluster-aligned (damaged L1 table?)"
            )));
        }
        if l2_offset.saturating_add(cs) > self.file.len() {
            return Err(self.file.bad(format_args!(
                "L2 table {l1_index} at offset {l2_offset} points past the end of the file at {} bytes (truncated?)",
                self.file.len()
            )));
        }
        let base = l1_index as u64 * l2_entries * cs;
        let first = (range.start - base) / cs;
        let last = (range.end - 1 - base) / cs;
        let raw = self.file.read_vec(
            l2_offset + first * self.entry_bytes,
            (last - first + 1) * self.entry_bytes,
            &|| format!("L2 table {l1_index}"),
        )?;
        for (i, e) in raw.chunks_exact(self.entry_bytes as usize).enumerate() {
            let idx = first + i as u64;
            let start = base + idx * cs;
            let clip = start.max(range.start)..(start + cs).min(range.end);
            self.map_entry(l1_index, idx, start, be64(e, 0), be64(e, 8), clip, out)?;
        }
        Ok(())
    }

    /// One L2 entry (and its subcluster bitmap with extended L2 entries).
    #[allow(clippy::too_many_arguments)]
    fn map_entry(
        &self,
        l1_index: usize,
        l2_index: u64,
        start: u64,
        e: u64,
        bitmap: u64,
        clip: Range<u64>,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let cs = self.cluster();
        let here = || format!("L2 table {l1_index} entry {l2_index} (guest offset {start})");
        if e & COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let offset = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
            if offset == 0 || offset >= self.file.len() {
                return Err(self.file.bad(format_args!(
                    "{} points to compressed data at {offset}, past the end of the file at {} bytes (truncated?)",
                    here(),
                    self.file.len()
                )));
            }
            let max_len = (sectors * 512).saturating_sub(offset % 512);
            push(
                out,
                clip,
                Kind::Compressed(Compressed {
                    file: 0,
                    offset,
                    max_len,
                    codec: self.codec,
                    marker: None,
                    unit_start: start,
                    unit_len: cs,
                    need: cs.min(self.size - start),
                }),
            );
            return Ok(());
        }
        let offset = e & OFFSET_MASK;
        if offset % cs != 0 {
            return Err(self.file.bad(format_args!(
                "{} points to offset {offset}, which is not cluster-aligned (damaged L2 table?)",
                here()
            )));
        }
        if offset != 0 && offset >= self.file.len() {
            return Err(self.file.bad(format_args!(
                "{} points to offset {offset}, past the end of the file at {} bytes (broken L2 table or truncated file)",
                here(),
                self.file.len()
            )));
        }
        if !self.extended {
            let kind = if e & ZERO_FLAG != 0 {
                Kind::Zero
            } else if offset == 0 {
                Kind::Backing
            } else {
                Kind::Data {
                    file: 0,
                    offset: offset + (clip.start - start),
                }
            };
            push(out, clip, kind);
            return Ok(());
        }
        // Extended L2: bit i of the low half says subcluster i is allocated, bit i of the
        // high half says it reads as zeros.
        let sc = cs / 32;
        let (alloc, zero) = (bitmap & 0xffff_ffff, bitmap >> 32);
        if alloc & zero != 0 || (offset == 0 && alloc != 0) {
            return Err(self.file.bad(format_args!(
                "{} has an invalid subcluster bitmap {bitmap:#x}",
                here()
            )));
        }
        let first = (clip.start - start) / sc;
        let last = (clip.end - 1 - start) / sc;
        for i in first..=last {
            let s = start + i * sc;
            let r = s.max(clip.start)..(s + sc).min(clip.end);
            let kind = if zero >> i & 1 != 0 {
                Kind::Zero
            } else if alloc >> i & 1 != 0 {
                Kind::Data {
                    file: 0,
                    offset: offset + (r.start - start),
                }
            } else {
                Kind::Backing
            };
            push(out, r, kind);
        }
        Ok(())
    }
}

use super::layered::Extent;

impl Layout for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        let per_l1 = self.cluster() * (self.cluster() / self.entry_bytes);
        let mut pos = range.start;
        while pos < range.end {
            let l1_index = pos / per_l1;
            let end = ((l1_index + 1) * per_l1).min(range.end);
            let Ok(i) = usize::try_from(l1_index) else {
                return Err(self.file.bad("guest offset beyond the L1 table"));
            };
            self.map_l2(i, pos..end, out)?;
            pos = end;
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
