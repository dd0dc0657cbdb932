//! What every mapped format (qcow2, VMDK, VHD, VHDX) has in common: the guest disk is cut
//! into units (clusters, grains, blocks) that are each stored in a host file, compressed,
//! explicitly zero, or absent from this layer (then the backing image, or zeros, shows
//! through). A format only has to describe a guest range as a list of [`Extent`]s; this
//! module turns that into `allocated` and `read_at`, follows the backing chain, and reads
//! contiguous data with one `pread`.

use super::host::HostFile;
use super::{DiskImage, SourceStamp};
use crate::blockdev::BlockRead;
use crate::{Error, Result};
use std::io::Read;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How a compressed unit is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    /// Raw deflate, no header (qcow2 compression type 0).
    Deflate,
    /// Deflate with the zlib header and checksum (VMDK stream-optimized grains).
    Zlib,
    /// One zstd frame (qcow2 compression type 1).
    Zstd,
}

/// Where the bytes of one compressed unit are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Compressed {
    pub file: usize,
    /// Host offset of the compressed bytes (or of the VMDK grain marker before them).
    pub offset: u64,
    /// At most this many compressed bytes (clipped to the end of the file).
    pub max_len: u64,
    pub codec: Codec,
    /// VMDK stream-optimized: a 12-byte grain marker precedes the data, holding the
    /// extent-relative sector given here (checked) and the compressed size.
    pub marker: Option<u64>,
    /// Guest offset of the first byte of the unit.
    pub unit_start: u64,
    /// Decompressed size of the unit.
    pub unit_len: u64,
    /// How many bytes must decompress at least: less than `unit_len` for a last, partial
    /// unit, which some writers compress short.
    pub need: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Not stored in this layer: the backing image's bytes, or zeros without one.
    Backing,
    /// Reads as zeros, hiding any backing image.
    Zero,
    /// Stored as is in host file `file`, starting at host offset `offset`.
    Data {
        file: usize,
        offset: u64,
    },
    Compressed(Compressed),
}

/// A guest range and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Extent {
    pub range: Range<u64>,
    pub kind: Kind,
}

/// Appends `range` with `kind`, merging it into the previous extent when they continue
/// each other (same kind, and for data contiguous in the host file), so that runs of
/// consecutive clusters become one extent and one `pread`.
pub(super) fn push(out: &mut Vec<Extent>, range: Range<u64>, kind: Kind) {
    if range.start >= range.end {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.range.end == range.start {
            let merge = match (last.kind, kind) {
                (Kind::Backing, Kind::Backing) | (Kind::Zero, Kind::Zero) => true,
                (
                    Kind::Data {
                        file: f1,
                        offset: o1,
                    },
                    Kind::Data {
                        file: f2,
                        offset: o2,
                    },
                ) => f1 == f2 && o1.checked_add(last.range.end - last.range.start) == Some(o2),
                _ => false,
            };
            if merge {
                last.range.end = range.end;
                return;
            }
        }
    }
    out.push(Extent { range, kind });
}

/// A format's description of its guest disk.
pub(super) trait Layout: Send + Sync {
    /// Guest-visible size in bytes.
    fn size(&self) -> u64;
    /// Appends extents covering `range` (within `0..size()`) exactly and in order. Reads
    /// only metadata; every host offset it returns has been checked against the file.
    fn map(&self, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()>;
    /// The host file with index `i` (as named by `Kind::Data` and `Compressed`).
    fn file(&self, i: usize) -> &HostFile;
    /// All host files of this layer, for the change-detection stamp.
    fn files(&self) -> Vec<&HostFile>;
}

/// A decompressed unit kept for the next read: a read that ends inside a compressed
/// cluster is usually followed by one that starts there.
struct UnitCache {
    key: Option<(usize, u64)>,
    data: Arc<Vec<u8>>,
}

/// A [`Layout`] with its optional backing image, presented as a [`DiskImage`].
pub(super) struct Layered<L: Layout> {
    format: &'static str,
    layout: L,
    backing: Option<Box<dyn DiskImage>>,
    cache: Mutex<UnitCache>,
}

impl<L: Layout> Layered<L> {
    pub fn new(format: &'static str, layout: L, backing: Option<Box<dyn DiskImage>>) -> Self {
        Layered {
            format,
            layout,
            backing,
            cache: Mutex::new(UnitCache {
                key: None,
                data: Arc::new(Vec::new()),
            }),
        }
    }

    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.layout.map(range.clone(), &mut out)?;
        // A format bug must not turn into reading the wrong bytes.
        let covers = out.first().is_some_and(|e| e.range.start == range.start)
            && out.last().is_some_and(|e| e.range.end == range.end)
            && out.windows(2).all(|w| w[0].range.end == w[1].range.start);
        if !covers && range.start < range.end {
            return Err(Error::Other(format!(
                "internal error: the {} reader mapped {range:?} as {out:?}",
                self.format
            )));
        }
        Ok(out)
    }

    /// The decompressed bytes of one unit, from the cache or the file.
    fn unit(&self, c: &Compressed) -> Result<Arc<Vec<u8>>> {
        let key = (c.file, c.offset);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.key == Some(key) {
                return Ok(cache.data.clone());
            }
        }
        let data = Arc::new(self.decompress(c)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.key = Some(key);
        cache.data = data.clone();
        Ok(data)
    }

    fn decompress(&self, c: &Compressed) -> Result<Vec<u8>> {
        let f = self.layout.file(c.file);
        let what = || format!("compressed data for guest offset {}", c.unit_start);
        let (offset, len) = if let Some(sector) = c.marker {
            // VMDK grain marker: u64 sector, u32 compressed size, then the data.
            let mut m = [0u8; 12];
            f.read_exact_at(c.offset, &mut m, &|| {
                format!("grain marker for guest offset {}", c.unit_start)
            })?;
            let lba = super::host::le64(&m, 0);
            let size = super::host::le32(&m, 8) as u64;
            if lba != sector {
                return Err(f.bad(format_args!(
                    "the grain marker at offset {} names sector {lba}, but the grain table \
                     maps it to sector {sector} (damaged grain table?)",
                    c.offset
                )));
            }
            if size == 0 || size > c.max_len {
                return Err(f.bad(format_args!(
                    "the grain marker at offset {} claims {size} compressed bytes (damaged?)",
                    c.offset
                )));
            }
            (c.offset + 12, size)
        } else {
            (c.offset, c.max_len)
        };
        if offset >= f.len() {
            return Err(f.bad(format_args!(
                "{} at offset {offset} lies past the end of the file at {} bytes (truncated?)",
                what(),
                f.len()
            )));
        }
        // qemu writes the last compressed cluster without padding it to a whole sector, so
        // a length that runs past the end of the file is normal: read what is there.
        let len = len.min(f.len() - offset);
        let src = f.read_vec(offset, len, &what)?;
        let want = c.need.min(c.unit_len) as usize;
        let mut out = vec![0u8; c.unit_len as usize];
        let got = match c.codec {
            Codec::Deflate => fill(flate2::read::DeflateDecoder::new(&src[..]), &mut out),
            Codec::Zlib => fill(flate2::read::ZlibDecoder::new(&src[..]), &mut out),
            Codec::Zstd => match zstd::stream::read::Decoder::with_buffer(&src[..]) {
                Ok(d) => fill(d.single_frame(), &mut out),
                Err(e) => Err(e),
            },
        };
        match got {
            Ok(n) if n >= want => Ok(out),
            Ok(n) => Err(f.bad(format_args!(
                "{} at offset {offset} decompresses to {n} bytes instead of {want}",
                what()
            ))),
            Err(e) => Err(f.bad(format_args!(
                "{} at offset {offset} does not decompress ({:?}): {e}",
                what(),
                c.codec
            ))),
        }
    }
}

/// Reads from `r` until `out` is full or the stream ends; returns the bytes read.
fn fill(mut r: impl Read, out: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < out.len() {
        match r.read(&mut out[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Appends `r` to a sorted list of disjoint ranges, merging it with the last one.
fn add(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}

impl<L: Layout> BlockRead for Layered<L> {
    fn size(&self) -> u64 {
        self.layout.size()
    }

    fn allocated(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let range = range.start.min(self.size())..range.end.min(self.size());
        let mut out = Vec::new();
        if range.start >= range.end {
            return Ok(out);
        }
        for e in self.extents(range)? {
            match e.kind {
                Kind::Zero => {}
                Kind::Backing => {
                    if let Some(b) = &self.backing {
                        let end = e.range.end.min(b.size());
                        if e.range.start < end {
                            for r in b.allocated(e.range.start..end)? {
                                add(&mut out, r);
                            }
                        }
                    }
                }
                Kind::Data { file, offset } => {
                    // Holes in a sparse host file (flat extents, preallocated clusters)
                    // read as zeros: leave them out too.
                    let len = e.range.end - e.range.start;
                    let end = offset.saturating_add(len);
                    for h in self.layout.file(file).data_ranges(offset..end) {
                        add(
                            &mut out,
                            e.range.start + (h.start - offset)..e.range.start + (h.end - offset),
                        );
                    }
                }
                Kind::Compressed(_) => add(&mut out, e.range),
            }
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size());
        let Some(end) = end else {
            return Err(Error::Other(format!(
                "read of {} bytes at offset {offset} is past the end of the {} image ({} bytes)",
                buf.len(),
                self.format,
                self.size()
            )));
        };
        if buf.is_empty() {
            return Ok(());
        }
        for e in self.extents(offset..end)? {
            let part = &mut buf[(e.range.start - offset) as usize..(e.range.end - offset) as usize];
            match e.kind {
                Kind::Zero => part.fill(0),
                Kind::Backing => match &self.backing {
                    Some(b) => {
                        let split =
                            (b.size().clamp(e.range.start, e.range.end) - e.range.start) as usize;
                        let (inside, beyond) = part.split_at_mut(split);
                        if !inside.is_empty() {
                            b.read_at(e.range.start, inside)?;
                        }
                        beyond.fill(0);
                    }
                    None => part.fill(0),
                },
                Kind::Data { file, offset: host } => {
                    let f = self.layout.file(file);
                    // A cluster may run past the end of the host file (qemu does not
                    // always extend the file to the end of the last cluster): zeros.
                    let avail = f.len().saturating_sub(host).min(part.len() as u64) as usize;
                    let (inside, beyond) = part.split_at_mut(avail);
                    if !inside.is_empty() {
                        f.read_exact_at(host, inside, &|| {
                            format!("data for guest offset {}", e.range.start)
                        })?;
                    }
                    beyond.fill(0);
                }
                Kind::Compressed(c) => {
                    let unit = self.unit(&c)?;
                    let from = (e.range.start - c.unit_start) as usize;
                    let src = unit.get(from..from + part.len()).ok_or_else(|| {
                        Error::Other(format!(
                            "internal error: {} extent {:?} outside its unit",
                            self.format, e.range
                        ))
                    })?;
                    part.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

impl<L: Layout> DiskImage for Layered<L> {
    fn format(&self) -> &'static str {
        self.format
    }

    fn stamp(&self) -> Option<SourceStamp> {
        let files = self.layout.files();
        let top = files.first()?.stamp();
        let others = files.iter().skip(1).map(|f| f.stamp());
        let backing = self.backing.as_ref().map(|b| b.stamp());
        super::host::combine_stamps(top, others.chain(backing))
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = self
            .layout
            .files()
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        v.extend(self.backing.iter().flat_map(|b| b.files()));
        v
    }

    fn layers(&self) -> Vec<super::Layer> {
        let files = self.layout.files();
        let mut v = vec![super::Layer {
            files: files.iter().map(|f| f.path().to_path_buf()).collect(),
            stamp: super::host::combine_stamps(
                files.first().and_then(|f| f.stamp()),
                files.iter().skip(1).map(|f| f.stamp()),
            ),
        }];
        v.extend(self.backing.iter().flat_map(|b| b.layers()));
        v
    }

    fn top_layer(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let range = range.start.min(self.size())..range.end.min(self.size());
        let mut out = Vec::new();
        if range.start >= range.end {
            return Ok(out);
        }
        for e in self.extents(range)? {
            if e.kind != Kind::Backing {
                add(&mut out, e.range);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_merges_contiguous_runs_only() {
        let mut v = Vec::new();
        push(
            &mut v,
            0..10,
            Kind::Data {
                file: 0,
                offset: 100,
            },
        );
        push(
            &mut v,
            10..20,
            Kind::Data {
                file: 0,
                offset: 110,
            },
        );
        push(
            &mut v,
            20..30,
            Kind::Data {
                file: 0,
                offset: 200,
            },
        );
        push(&mut v, 30..40, Kind::Zero);
        push(&mut v, 40..50, Kind::Zero);
        push(&mut v, 50..50, Kind::Backing);
        assert_eq!(
            v,
            vec![
                Extent {
                    range: 0..20,
                    kind: Kind::Data {
                        file: 0,
                        offset: 100
                    }
                },
                Extent {
                    range: 20..30,
                    kind: Kind::Data {
                        file: 0,
                        offset: 200
                    }
                },
                Extent {
                    range: 30..50,
                    kind: Kind::Zero
                },
            ]
        );
    }

    #[test]
    fn add_merges_touching_ranges() {
        let mut v = Vec::new();
        add(&mut v, 0..10);
        add(&mut v, 10..20);
        add(&mut v, 30..40);
        add(&mut v, 35..35);
        assert_eq!(v, vec![0..20, 30..40]);
    }
}
