//! VMDK, from VMware's published "Virtual Disk Format 5.0": a text descriptor lists the
//! extents that make up the disk, one after another. Flat extents are raw byte ranges of a
//! file; hosted sparse extents ("KDMV") map 512-byte sectors through a grain directory and
//! grain tables, optionally with deflate-compressed grains behind markers
//! (streamOptimized). A descriptor may name a parent (`parentFileNameHint`): grains this
//! delta does not hold come from the parent.
//!
//! Supported: monolithicFlat, twoGbMaxExtentFlat, monolithicSparse, twoGbMaxExtentSparse,
//! streamOptimized, vmfs (flat), ZERO extents, and delta chains. Refused with a message:
//! ESX sparse formats (vmfsSparse "COWD", seSparse), raw device mappings, NOACCESS extents.
//!
//! Grain directories are loaded at open (4 bytes per 32 MiB of disk with the usual
//! 64 KiB grains); grain table entries are read on demand, only the slice a call needs.

use super::host::{le16, le32, le64, HostFile};
use super::layered::{push, Codec, Compressed, Extent, Kind, Layered, Layout};
use super::{Chain, DiskImage};
use crate::{Error, Result};
use std::ops::Range;
use std::path::Path;

const SECTOR: u64 = 512;
/// Header gdOffset meaning "the grain directory is described by the footer".
const GD_AT_END: u64 = u64::MAX;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// Largest grain accepted. VMware and qemu write 64 KiB grains; the cap bounds the memory
/// a (damaged) header can make a compressed grain's decompression take.
const MAX_GRAIN: u64 = 16 << 20;
/// Largest descriptor read: real ones are a few hundred bytes.
const MAX_DESCRIPTOR: u64 = 1 << 20;

pub(super) struct Vmdk {
    /// files[0] is the file the user named (descriptor, or sparse file with embedded one).
    files: Vec<HostFile>,
    extents: Vec<VExtent>,
    size: u64,
}

struct VExtent {
    /// Guest byte range.
    start: u64,
    len: u64,
    kind: VKind,
}

enum VKind {
    Flat { file: usize, offset: u64 },
    Zero,
    Sparse(Sparse),
}

/// A hosted sparse extent's geometry and grain directory.
struct Sparse {
    file: usize,
    grain: u64,
    gt_entries: u64,
    /// Grain directory: sector offset of each grain table, 0 for none.
    gd: Vec<u32>,
    compressed: bool,
    markers: bool,
    zero_grain: bool,
}

/// The interesting lines of a descriptor.
#[derive(Debug, Default)]
struct Descriptor {
    cid: Option<u32>,
    parent_cid: Option<u32>,
    parent_hint: Option<String>,
    extents: Vec<ExtentLine>,
}

#[derive(Debug, PartialEq, Eq)]
struct ExtentLine {
    access: String,
    sectors: u64,
    kind: String,
    file: Option<String>,
    offset: u64,
}

/// The parsed hosted-sparse header (the on-disk `SparseExtentHeader`, little-endian).
struct Header {
    flags: u32,
    capacity: u64,
    grain_sectors: u64,
    desc_offset: u64,
    desc_size: u64,
    gt_entries: u32,
    gd_offset: u64,
    compress_algorithm: u16,
}

impl Header {
    fn parse(f: &HostFile, at: u64) -> Result<Header> {
        let mut h = [0u8; 512];
        f.read_exact_at(at, &mut h, &|| "sparse extent header".into())?;
        if &h[0..4] != b"KDMV" {
            return Err(f.bad(format_args!(
                "no sparse extent header (\"KDMV\") at offset {at}"
            )));
        }
        let version = le32(&h, 4);
        if !(1..=3).contains(&version) {
            return Err(f.unsupported(format_args!(
                "sparse extent version {version} is not supported (1 to 3 are)"
            )));
        }
        Ok(Header {
            flags: le32(&h, 8),
            capacity: le64(&h, 12),
            grain_sectors: le64(&h, 20),
            desc_offset: le64(&h, 28),
            desc_size: le64(&h, 36),
            gt_entries: le32(&h, 44),
            gd_offset: le64(&h, 56),
            compress_algorithm: le16(&h, 77),
        })
    }
}

pub(super) fn open(path: &Path, above: &Chain) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(open_vmdk(path, above)?.0))
}

/// Opens a VMDK and its parents; also returns its CID, which a child checks.
fn open_vmdk(path: &Path, above: &Chain) -> Result<(Layered<Vmdk>, Option<u32>)> {
    let chain = super::descend(path, above)?;
    let top = HostFile::open(path)?;
    let mut head = [0u8; 4];
    top.read_exact_at(0, &mut head[..(top.len().min(4) as usize)], &|| {
        "header".into()
    })?;
    let mut files = vec![];
    let desc = if &head == b"KDMV" {
        let h = Header::parse(&top, 0)?;
        // A sparse file is its own single extent. Its embedded descriptor (if any) names
        // the file as it was called when created, which breaks once the file is renamed,
        // so only its parent and CID lines are used.
        let mut d = if h.desc_offset == 0 {
            Descriptor::default()
        } else {
            let len = h.desc_size.saturating_mul(SECTOR).min(MAX_DESCRIPTOR);
            let at = h.desc_offset.saturating_mul(SECTOR);
            let text = top.read_vec(at, len, &|| "embedded descriptor".into())?;
            parse_descriptor(&top, &text)?
        };
        d.extents = vec![ExtentLine {
            access: "RW".into(),
            sectors: h.capacity,
            kind: "SPARSE".into(),
            file: None,
            offset: 0,
        }];
        d
    } else if &head == b"COWD" {
        return Err(top.unsupported(
            "is an ESX vmfsSparse (COWD) extent, which cairn does not read; convert it with \
             qemu-img convert -O vmdk or vmkfstools",
        ));
    } else {
        let text = top.read_vec(0, top.len().min(MAX_DESCRIPTOR), &|| "descriptor".into())?;
        parse_descriptor(&top, &text)?
    };
    files.push(top);

    let mut extents = Vec::new();
    let mut pos = 0u64;
    for (i, line) in desc.extents.iter().enumerate() {
        let len = line
            .sectors
            .checked_mul(SECTOR)
            .filter(|l| pos.checked_add(*l).is_some())
            .ok_or_else(|| files[0].bad(format_args!("extent {} is impossibly large", i + 1)))?;
        if line.access == "NOACCESS" {
            return Err(files[0].unsupported(format_args!(
                "extent {} is NOACCESS; cairn cannot back up a disk it may not read",
                i + 1
            )));
        }
        let kind = match line.kind.as_str() {
            "ZERO" => VKind::Zero,
            "FLAT" | "VMFS" => {
                let file = extent_file(&mut files, path, line, i, &chain)?;
                let offset = line.offset.saturating_mul(SECTOR);
                let f = &files[file];
                if offset.saturating_add(len) > f.len() {
                    return Err(f.bad(format_args!(
                        "flat extent is {} bytes but the descriptor {} needs {} (truncated?)",
                        f.len(),
                        path.display(),
                        offset.saturating_add(len)
                    )));
                }
                VKind::Flat { file, offset }
            }
            "SPARSE" => {
                let file = extent_file(&mut files, path, line, i, &chain)?;
                VKind::Sparse(open_sparse(&files[file], file)?)
            }
            other => {
                return Err(files[0].unsupported(format_args!(
                    "extent {} has type {other}, which cairn does not read (it reads FLAT, \
                     VMFS, SPARSE and ZERO); convert with qemu-img convert -O vmdk",
                    i + 1
                )))
            }
        };
        extents.push(VExtent {
            start: pos,
            len,
            kind,
        });
        pos += len;
    }
    if extents.is_empty() {
        return Err(files[0].bad("the descriptor lists no extents"));
    }
    let vmdk = Vmdk {
        files,
        extents,
        size: pos,
    };

    let parent = match &desc.parent_hint {
        None => None,
        Some(hint) => Some(open_parent(path, hint, desc.parent_cid, &chain)?),
    };
    Ok((Layered::new("vmdk", vmdk, parent), desc.cid))
}

/// Opens a delta's parent, checking that it is the disk the delta was made from.
fn open_parent(
    path: &Path,
    hint: &str,
    parent_cid: Option<u32>,
    chain: &Chain,
) -> Result<Box<dyn DiskImage>> {
    let fail = |e: Error| {
        let msg = format!(
            "{}: its parent disk {hint} cannot be used: {e}",
            path.display()
        );
        match e {
            Error::Usage(_) => Error::Usage(msg),
            _ => Error::Other(msg),
        }
    };
    // A delta's parent is a VMDK: the delta says so, not the parent's bytes.
    let ppath = super::linked(path, hint, chain).map_err(fail)?;
    if super::probe::detect(&ppath).map_err(fail)? != super::Format::Vmdk {
        return Err(fail(Error::Other("it is not a VMDK".into())));
    }
    let (img, cid) = open_vmdk(&ppath, chain).map_err(fail)?;
    if let (Some(want), Some(have)) = (parent_cid, cid) {
        if want != have {
            return Err(fail(Error::Other(format!(
                "the parent's CID is {have:08x} but the delta expects {want:08x}: the parent \
                 was modified after the delta was created, so the chain no longer reads as \
                 the guest saw it"
            ))));
        }
    }
    Ok(Box::new(img))
}

/// Opens (or reuses) the file an extent line names, relative to the descriptor.
fn extent_file(
    files: &mut Vec<HostFile>,
    desc: &Path,
    line: &ExtentLine,
    i: usize,
    chain: &Chain,
) -> Result<usize> {
    let Some(name) = &line.file else {
        return Ok(0); // a bare sparse extent describes itself
    };
    let p = super::linked(desc, name, chain)?;
    let f = HostFile::open(&p).map_err(|e| {
        Error::Other(format!(
            "{}: extent {} names {name} ({}), which cannot be opened: {e}",
            desc.display(),
            i + 1,
            p.display()
        ))
    })?;
    // Two extent lines may name one file (at different offsets): open it once.
    if let Some(i) = files.iter().position(|g| g.same_file(&f)) {
        return Ok(i);
    }
    files.push(f);
    Ok(files.len() - 1)
}

fn open_sparse(f: &HostFile, file: usize) -> Result<Sparse> {
    let mut h = Header::parse(f, 0)?;
    if h.gd_offset == GD_AT_END {
        // streamOptimized written in one pass: the footer (a copy of the header, between a
        // footer marker and the end-of-stream marker) holds the real grain directory offset.
        let at = f.len().checked_sub(2 * SECTOR).filter(|a| *a >= SECTOR).ok_or_else(|| {
            f.bad("the header says the grain directory is in the footer, but the file is too short for one (truncated?)")
        })?;
        let footer = Header::parse(f, at).map_err(|_| {
            f.bad("the header says the grain directory is in the footer, but there is no footer at the end of the file (truncated?)")
        })?;
        if footer.gd_offset == GD_AT_END {
            return Err(f.bad("the footer does not give the grain directory's offset"));
        }
        h = Header {
            desc_offset: h.desc_offset,
            desc_size: h.desc_size,
            ..footer
        };
    }
    let grain = h.grain_sectors.saturating_mul(SECTOR);
    if h.grain_sectors == 0 || grain > MAX_GRAIN || !h.grain_sectors.is_power_of_two() {
        return Err(f.bad(format_args!(
            "grain size of {} sectors is invalid (damaged header?)",
            h.grain_sectors
        )));
    }
    if h.gt_entries == 0 || h.gt_entries > 4096 {
        return Err(f.bad(format_args!(
            "{} entries per grain table is invalid (damaged header?)",
            h.gt_entries
        )));
    }
    let compressed = h.flags & FLAG_COMPRESSED != 0;
    if compressed && h.compress_algorithm != 1 {
        return Err(f.unsupported(format_args!(
            "grain compression algorithm {} is unknown (only 1, deflate, is defined)",
            h.compress_algorithm
        )));
    }
    let gt_entries = h.gt_entries as u64;
    let per_gt = grain * gt_entries;
    let capacity = h.capacity.saturating_mul(SECTOR);
    let tables = capacity.div_ceil(per_gt);
    let gd_raw = f.read_vec(
        h.gd_offset.saturating_mul(SECTOR),
        tables.saturating_mul(4),
        &|| "grain directory".into(),
    )?;
    let gd: Vec<u32> = gd_raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
    Ok(Sparse {
        file,
        grain,
        gt_entries,
        gd,
        compressed,
        markers: h.flags & FLAG_MARKERS != 0,
        zero_grain: h.flags & FLAG_ZERO_GRAIN != 0,
    })
}

/// Parses descriptor text: key="value" lines and extent lines; the text ends at the first
/// NUL (an embedded descriptor is padded with them).
fn parse_descriptor(f: &HostFile, raw: &[u8]) -> Result<Descriptor> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    // VMware may write windows-1252 (`encoding=` line); only ASCII matters for parsing,
    // and a file name that does not decode fails to open with its name shown.
    let text = String::from_utf8_lossy(raw.get(..end).unwrap_or(raw));
    let mut d = Descriptor::default();
    let hex = |v: &str, key: &str| -> Result<Option<u32>> {
        let n = u32::from_str_radix(v, 16).map_err(|_| {
            f.bad(format_args!(
                "descriptor {key}={v} is not a hexadecimal number"
            ))
        })?;
        Ok((n != 0xffff_ffff).then_some(n))
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            d.extents.push(parse_extent_line(line).ok_or_else(|| {
                f.bad(format_args!(
                    "descriptor line {} is not a valid extent line: {line}",
                    n + 1
                ))
            })?);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        match k {
            "CID" => d.cid = hex(v, k)?,
            "parentCID" => d.parent_cid = hex(v, k)?,
            "parentFileNameHint" if !v.is_empty() => d.parent_hint = Some(v.to_string()),
            "createType"
                if matches!(
                    v,
                    "vmfsSparse"
                        | "seSparse"
                        | "vmfsRDM"
                        | "vmfsRaw"
                        | "vmfsPassthroughRawDeviceMap"
                        | "fullDevice"
                        | "partitionedDevice"
                        | "vmfsRawDeviceMap"
                ) =>
            {
                return Err(f.unsupported(format_args!(
                    "VMDK type {v} is not supported; cairn reads monolithicFlat, \
                     twoGbMaxExtentFlat, monolithicSparse, twoGbMaxExtentSparse, \
                     streamOptimized and vmfs disks. Convert with qemu-img convert -O vmdk"
                )))
            }
            _ => {}
        }
    }
    Ok(d)
}

/// `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`
fn parse_extent_line(line: &str) -> Option<ExtentLine> {
    let mut it = line.splitn(3, char::is_whitespace);
    let access = it.next()?.to_string();
    let rest = it.next().map(|s| (s, it.next().unwrap_or("")))?;
    let sectors: u64 = rest.0.trim().parse().ok()?;
    let rest = rest.1.trim_start();
    let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let rest = rest.trim();
    let (file, rest) = if let Some(r) = rest.strip_prefix('"') {
        let close = r.find('"')?;
        (Some(r[..close].to_string()), r[close + 1..].trim())
    } else {
        (None, rest)
    };
    let offset = if rest.is_empty() {
        0
    } else {
        rest.parse().ok()?
    };
    Some(ExtentLine {
        access,
        sectors,
        kind: kind.to_string(),
        file,
        offset,
    })
}

impl Sparse {
    /// Maps `range`, relative to the start of this extent; `base` is the extent's guest
    /// offset.
    fn map(
        &self,
        f: &HostFile,
        base: u64,
        ext_len: u64,
        range: Range<u64>,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let per_gt = self.grain * self.gt_entries;
        let mut pos = range.start;
        while pos < range.end {
            let t = pos / per_gt;
            let end = ((t + 1) * per_gt).min(range.end);
            let gde = usize::try_from(t)
                .ok()
                .and_then(|i| self.gd.get(i))
                .copied()
                .unwrap_or(0);
            if gde == 0 {
                push(out, base + pos..base + end, Kind::Backing);
                pos = end;
                continue;
            }
            let gt_off = gde as u64 * SECTOR;
            if gt_off.saturating_add(self.gt_entries * 4) > f.len() {
                return Err(f.bad(format_args!(
                    "grain table {t} at offset {gt_off} points past the end of the file at {} bytes (truncated?)",
                    f.len()
                )));
            }
            let first = (pos - t * per_gt) / self.grain;
            let last = (end - 1 - t * per_gt) / self.grain;
            let raw = f.read_vec(gt_off + first * 4, (last - first + 1) * 4, &|| {
                format!("grain table {t}")
            })?;
            for (i, e) in raw.chunks_exact(4).enumerate() {
                let g = t * self.gt_entries + first + i as u64; // grain index in the extent
                let gstart = g * self.grain;
                let clip = gstart.max(pos)..(gstart + self.grain).min(end);
                let gte = le32(e, 0) as u64;
                let r = base + clip.start..base + clip.end;
                let kind = if gte == 0 {
                    Kind::Backing
                } else if gte == 1 && self.zero_grain {
                    Kind::Zero
                } else {
                    let host = gte * SECTOR;
                    // Uncompressed grains are written whole; a compressed one at least
                    // starts inside the file (its length is in its marker).
                    let whole = if self.compressed {
                        1
                    } else {
                        self.grain.min(ext_len - gstart)
                    };
                    if host.saturating_add(whole) > f.len() {
                        return Err(f.bad(format_args!(
                            "grain {g} (guest offset {}) points to offset {host}, past the end of the file at {} bytes (truncated?)",
                            base + gstart,
                            f.len()
                        )));
                    }
                    if self.compressed {
                        Kind::Compressed(Compressed {
                            file: self.file,
                            offset: host,
                            max_len: 2 * self.grain + 4096,
                            codec: Codec::Zlib,
                            marker: self.markers.then_some(gstart / SECTOR),
                            unit_start: base + gstart,
                            unit_len: self.grain,
                            need: self.grain.min(ext_len - gstart),
                        })
                    } else {
                        Kind::Data {
                            file: self.file,
                            offset: host + (clip.start - gstart),
                        }
                    }
                };
                push(out, r, kind);
            }
            pos = end;
        }
        Ok(())
    }
}

impl Layout for Vmdk {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        // Extents are sorted and contiguous: find the first one that ends after the start.
        let first = self
            .extents
            .partition_point(|e| e.start + e.len <= range.start);
        for e in self.extents.iter().skip(first) {
            if e.start >= range.end {
                break;
            }
            let s = range.start.max(e.start);
            let t = range.end.min(e.start + e.len);
            match &e.kind {
                VKind::Zero => push(out, s..t, Kind::Zero),
                VKind::Flat { file, offset } => push(
                    out,
                    s..t,
                    Kind::Data {
                        file: *file,
                        offset: offset + (s - e.start),
                    },
                ),
                VKind::Sparse(sp) => {
                    let f = self.file(sp.file);
                    sp.map(f, e.start, e.len, s - e.start..t - e.start, out)?
                }
            }
        }
        Ok(())
    }

    fn file(&self, i: usize) -> &HostFile {
        // Indices come from this struct's own extents, so they are always in range.
        &self.files[i.min(self.files.len() - 1)]
    }

    fn files(&self) -> Vec<&HostFile> {
        self.files.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_lines() {
        assert_eq!(
            parse_extent_line(r#"RW 4192256 FLAT "my disk-f001.vmdk" 2048"#),
            Some(ExtentLine {
                access: "RW".into(),
                sectors: 4192256,
                kind: "FLAT".into(),
                file: Some("my disk-f001.vmdk".into()),
                offset: 2048
            })
        );
        let z = parse_extent_line("RDONLY 100 ZERO").unwrap();
        assert_eq!((z.kind.as_str(), z.file), ("ZERO", None));
        assert_eq!(parse_extent_line("RW lots SPARSE \"x\""), None);
        assert_eq!(parse_extent_line("RW 5 SPARSE \"unterminated"), None);
    }
}
