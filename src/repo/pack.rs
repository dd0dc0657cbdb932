//! Pack files: many sealed blobs in one immutable file, with a sealed table of contents at
//! the end so the index can be rebuilt from packs alone.
//!
//! ```text
//! file header (40) | blob … blob | sealed pack header | u32 LE length of sealed pack header
//! ```

use super::envelope::{self, FileHeader, FileKind, HEADER_LEN};
use crate::crypto::{Keys, Sealer};
use crate::{Error, Id, Result};
use bytes::{Bytes, BytesMut};

/// What a blob holds. Stored in pack headers and index entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// A chunk of disk content.
    Data = 0,
    /// A disk chunk table (see snapshot.rs).
    Table = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Table),
            _ => None,
        }
    }
}

/// One blob's place in its pack. `length` is the stored (sealed) size, `raw_len` the
/// plaintext size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

/// Encoded size of a [`PackEntry`]: kind u8 | id 32 | offset u32 | length u32 | raw_len u32.
pub const ENTRY_LEN: usize = 45;

impl PackEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<PackEntry> {
        if b.len() < ENTRY_LEN {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(PackEntry {
            kind: BlobKind::from_u8(b[0])?,
            id: Id::from_slice(&b[1..33])?,
            offset: u(33),
            length: u(37),
            raw_len: u(41),
        })
    }
}

/// The stretch of a pack that one read of `entries` (sorted by offset) fetches: (start,
/// length), from the first one's start to the furthest end, since the entries of a damaged
/// index may overlap or nest.
pub fn read_span<'a>(mut entries: impl Iterator<Item = &'a PackEntry>) -> (u64, usize) {
    let Some(first) = entries.next() else {
        return (0, 0);
    };
    let start = first.offset as u64;
    let end = entries.fold(start + first.length as u64, |end, e| {
        end.max(e.offset as u64 + e.length as u64)
    });
    (start, (end - start) as usize)
}

/// Blob `e` out of `bytes`, what a read of pack `pack` fetched from offset `start`: a
/// corrupt-pack error, not a panic, where the index places it outside (a truncated pack).
pub fn blob_in<'a>(bytes: &'a [u8], start: u64, e: &PackEntry, pack: &Id) -> Result<&'a [u8]> {
    (e.offset as u64)
        .checked_sub(start)
        .and_then(|s| bytes.get(s as usize..s as usize + e.length as usize))
        .ok_or_else(|| {
            Error::corrupt(
                pack_name(pack),
                format!(
                    "blob {} lies past the end of what the pack holds; run `cairn check`",
                    e.id.short()
                ),
            )
        })
}

/// A compressed and sealed blob, ready to be appended to a pack. Its bytes may share one
/// allocation with other blobs ([`seal_blob_into`]).
pub struct SealedBlob {
    pub kind: BlobKind,
    pub id: Id,
    pub raw_len: u32,
    pub bytes: Bytes,
}

fn blob_aad(kind: BlobKind, id: &Id) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = kind as u8;
    aad
}

/// Compresses (when it helps) and seals one blob. The id is bound as associated data, so
/// a blob cannot be swapped for another without detection even before re-hashing.
pub fn seal_blob(sealer: &Sealer, kind: BlobKind, id: Id, plain: &[u8], level: i32) -> SealedBlob {
    seal_blob_into(&mut BytesMut::new(), sealer, kind, id, plain, level)
}

/// [`seal_blob`] into the spare room of `out`. The blobs sealed one after another into a
/// buffer made with room for all of them are one allocation, freed with the last of them:
/// a backup segment's blobs cost the memory of their bytes and no more, and go back to
/// the system at once when the segment is in its pack (BENCHMARKS.md J).
pub fn seal_blob_into(
    out: &mut BytesMut,
    sealer: &Sealer,
    kind: BlobKind,
    id: Id,
    plain: &[u8],
    level: i32,
) -> SealedBlob {
    let (comp, data) = envelope::compress(plain, level);
    sealer.seal_parts_into(out, &[&[comp], &data], &blob_aad(kind, &id));
    SealedBlob {
        kind,
        id,
        raw_len: plain.len() as u32,
        bytes: out.split().freeze(),
    }
}

/// The most bytes [`seal_blob`] makes of `plain_len` bytes: stored raw when compression
/// does not help, behind one byte saying so.
pub fn sealed_len_max(sealer: &Sealer, plain_len: usize) -> usize {
    plain_len + 1 + sealer.overhead()
}

/// Opens, decompresses and verifies one blob: its plaintext must hash to its id.
pub fn open_blob(
    keys: &Keys,
    sealer: &Sealer,
    entry: &PackEntry,
    stored: &[u8],
    pack: &Id,
) -> Result<Vec<u8>> {
    let what = || format!("blob {} in pack {}", entry.id.short(), pack_name(pack));
    let payload = sealer.open(stored, &blob_aad(entry.kind, &entry.id), &what)?;
    let plain = envelope::decompress(&payload, entry.raw_len as usize, &what)?;
    if keys.chunk_id(&plain) != entry.id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(plain)
}

/// Moves a blob into another session's pack: opens it under the old key, then seals the
/// same payload (still compressed) under the new one. Used by prune's repacking.
///
/// Opening is the check: the blob's id and kind are its associated data, so a payload that
/// opens is exactly what a key holder sealed for this id, and any damage or swap fails here.
/// The payload is not decompressed and hashed again: that only re-checks the hash the
/// writer computed, which `check --read-data` does, and it was a quarter of prune's CPU
/// (BENCHMARKS.md K3). Repair, which salvages damaged packs, checks content first.
pub fn reseal_blob(
    old: &Sealer,
    new: &Sealer,
    entry: &PackEntry,
    stored: &[u8],
    pack: &Id,
) -> Result<SealedBlob> {
    let what = || format!("blob {} in pack {}", entry.id.short(), pack_name(pack));
    let aad = blob_aad(entry.kind, &entry.id);
    let payload = old.open(stored, &aad, &what)?;
    Ok(SealedBlob {
        kind: entry.kind,
        id: entry.id,
        raw_len: entry.raw_len,
        bytes: new.seal(&payload, &aad).into(),
    })
}

/// The backend name of a pack: `data/<first two hex digits>/<hex id>`.
pub use super::files::pack as pack_name;

/// Builds one pack in memory. Packs are tens of MiB, so holding one is a bounded cost.
/// Writes a pack as its blobs come: to memory (`PackWriter::new`) or to a staged object
/// of the backend (`PackWriter::to`), hashing as it goes, since the pack's name is the hash
/// of all its bytes.
pub struct PackWriter<W = Vec<u8>> {
    header: FileHeader,
    out: W,
    len: usize,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
}

impl PackWriter<Vec<u8>> {
    /// `header` carries the session salt the blobs were sealed under.
    pub fn new(header: FileHeader, capacity: usize) -> PackWriter {
        PackWriter::to(header, Vec::with_capacity(capacity + 64 * 1024))
            .expect("writing to memory cannot fail")
    }
}

impl<W: std::io::Write> PackWriter<W> {
    pub fn to(header: FileHeader, out: W) -> std::io::Result<PackWriter<W>> {
        let mut w = PackWriter {
            header,
            out,
            len: 0,
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
        };
        w.put(&header.encode())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.hasher.update(b);
        self.len += b.len();
        Ok(())
    }

    pub fn add(&mut self, blob: &SealedBlob) -> std::io::Result<()> {
        self.entries.push(PackEntry {
            kind: blob.kind,
            id: blob.id,
            offset: self.len as u32,
            length: blob.bytes.len() as u32,
            raw_len: blob.raw_len,
        });
        self.put(&blob.bytes)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the table of contents onto the end; returns the pack's id, its bytes (or
    /// staged object) and entries.
    pub fn finish(mut self, keys: &Keys) -> std::io::Result<(Id, W, Vec<PackEntry>)> {
        let mut toc = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        toc.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode_into(&mut toc);
        }
        let sealed = self.header.sealer(keys).seal(&toc, &self.header.encode());
        self.put(&sealed)?;
        self.put(&(sealed.len() as u32).to_le_bytes())?;
        let id = Id(*self.hasher.finalize().as_bytes());
        Ok((id, self.out, self.entries))
    }
}

/// A whole pack read back: its header and table of contents, verified.
pub struct PackContents {
    pub header: FileHeader,
    pub entries: Vec<PackEntry>,
}

/// Largest table of contents accepted: 32 MiB packs hold at most a few thousand blobs
/// (45 bytes each); a length beyond this is damage.
const MAX_TOC: usize = 16 << 20;

/// Reads only a pack's header and sealed table of contents (two small range reads, not
/// the whole pack): what rebuilding the index, and telling an orphaned pack from garbage,
/// need. The table of contents is authenticated in encrypted repositories; blob contents
/// are verified when they are read.
pub fn read_header(
    backend: &dyn crate::backend::Backend,
    keys: &Keys,
    id: &Id,
    size: u64,
) -> Result<PackContents> {
    let name = pack_name(id);
    if size < (HEADER_LEN + 4) as u64 {
        return Err(Error::corrupt(&name, "too short to be a pack"));
    }
    let head = backend.get_range(&name, 0, HEADER_LEN)?;
    let header = FileHeader::decode(FileKind::Pack, &head, keys, &name)?;
    let tail = backend.get_range(&name, size - 4, 4)?;
    let toc_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as usize;
    let blob_end = size
        .checked_sub(4 + toc_len as u64)
        .filter(|&e| e >= HEADER_LEN as u64 && toc_len <= MAX_TOC)
        .ok_or_else(|| Error::corrupt(&name, "pack header length points outside the file"))?;
    let sealed = backend.get_range(&name, blob_end, toc_len)?;
    let entries = open_toc(keys, &header, &head, &sealed, blob_end, &name)?;
    Ok(PackContents { header, entries })
}

/// Opens and checks a sealed table of contents whose blobs must end by `blob_end`.
fn open_toc(
    keys: &Keys,
    header: &FileHeader,
    head: &[u8],
    sealed: &[u8],
    blob_end: u64,
    name: &str,
) -> Result<Vec<PackEntry>> {
    let what = || name.to_string();
    let toc = header
        .sealer(keys)
        .open(sealed, &head[..HEADER_LEN], &what)?;
    let count = toc
        .get(..4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")) as usize)
        .ok_or_else(|| Error::corrupt(name, "empty pack header"))?;
    if Some(toc.len()) != count.checked_mul(ENTRY_LEN).and_then(|n| n.checked_add(4)) {
        return Err(Error::corrupt(name, "pack header has the wrong length"));
    }
    let mut entries = Vec::with_capacity(count);
    for raw in toc[4..].chunks_exact(ENTRY_LEN) {
        let e =
            PackEntry::decode(raw).ok_or_else(|| Error::corrupt(name, "bad pack header entry"))?;
        let end = e.offset as u64 + e.length as u64;
        if (e.offset as usize) < HEADER_LEN || end > blob_end {
            return Err(Error::corrupt(
                name,
                format!("blob {} lies outside the pack", e.id.short()),
            ));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Parses and verifies a whole pack file: its name must be the hash of its bytes, and every
/// entry must lie inside the blob area.
pub fn parse_pack(keys: &Keys, id: &Id, bytes: &[u8]) -> Result<PackContents> {
    let name = pack_name(id);
    if Id::of_file(bytes) != *id {
        return Err(Error::corrupt(
            &name,
            "content does not match its name (truncated or changed)",
        ));
    }
    let header = FileHeader::decode(FileKind::Pack, bytes, keys, &name)?;
    if bytes.len() < HEADER_LEN + 4 {
        return Err(Error::corrupt(&name, "too short"));
    }
    let toc_len = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4")) as usize;
    let blob_end = bytes
        .len()
        .checked_sub(4 + toc_len)
        .filter(|&e| e >= HEADER_LEN)
        .ok_or_else(|| Error::corrupt(&name, "pack header length points outside the file"))?;
    let entries = open_toc(
        keys,
        &header,
        &bytes[..HEADER_LEN],
        &bytes[blob_end..bytes.len() - 4],
        blob_end as u64,
        &name,
    )?;
    Ok(PackContents { header, entries })
}

/// Reads a whole pack and verifies every blob in it.
pub fn verify_pack(repo: &super::Repository, pack: &Id, indexed_blobs: usize) -> Result<()> {
    let bytes = repo.backend.get(&pack_name(pack))?;
    let contents = parse_pack(&repo.keys, pack, &bytes)?;
    let sealer = contents.header.sealer(&repo.keys);
    for e in &contents.entries {
        let stored = &bytes[e.offset as usize..e.offset as usize + e.length as usize];
        open_blob(&repo.keys, &sealer, e, stored, pack)?;
    }
    if contents.entries.len() < indexed_blobs {
        return Err(Error::corrupt(
            pack_name(pack),
            format!(
                "holds {} blobs, the index names {indexed_blobs}",
                contents.entries.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_spans_to_the_furthest_end_and_a_blob_outside_it_is_an_error() {
        let e = |offset: u32, length: u32| PackEntry {
            kind: BlobKind::Data,
            id: Id([offset as u8; 32]),
            offset,
            length,
            raw_len: length,
        };
        // Nested entries (a damaged index): the read covers the outer one.
        let run = [e(100, 900), e(200, 10)];
        assert_eq!(read_span(run.iter()), (100, 900));
        assert_eq!(read_span([].iter()), (0, 0));
        let bytes = vec![7u8; 900];
        assert_eq!(
            blob_in(&bytes, 100, &run[1], &Id([1; 32])).unwrap().len(),
            10
        );
        // What a truncated pack returned is shorter than the index says.
        let err = blob_in(&bytes[..500], 100, &run[0], &Id([1; 32])).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        // A blob before the read's start.
        assert!(blob_in(&bytes, 300, &run[1], &Id([1; 32])).is_err());
    }

    #[test]
    fn pack_round_trip() {
        let keys = Keys::from_master([4; 64]);
        let header = FileHeader::new(FileKind::Pack, &keys);
        let sealer = header.sealer(&keys);
        let mut w = PackWriter::new(header, 1 << 20);
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for c in &chunks {
            w.add(&seal_blob(&sealer, BlobKind::Data, keys.chunk_id(c), c, 3))
                .unwrap();
        }
        let (id, bytes, entries) = w.finish(&keys).unwrap();
        assert_eq!(id, Id::of_file(&bytes));
        let parsed = parse_pack(&keys, &id, &bytes).unwrap();
        assert_eq!(parsed.entries, entries);
        let sealer = parsed.header.sealer(&keys);
        for (e, c) in entries.iter().zip(&chunks) {
            let stored = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&keys, &sealer, e, stored, &id).unwrap(), c);
        }
        let e = entries[0];
        let mut bad = bytes.clone();
        bad[e.offset as usize + 5] ^= 1;
        assert!(parse_pack(&keys, &id, &bad).is_err());
        let stored = &bad[e.offset as usize..(e.offset + e.length) as usize];
        assert!(open_blob(&keys, &sealer, &e, stored, &id).is_err());
        assert!(parse_pack(&keys, &id, &bytes[..bytes.len() - 1]).is_err());
    }

    /// Repack checks a blob only by opening it, so opening must fail for damaged bytes and
    /// for a blob presented under another entry's id or kind (the index lying about it).
    #[test]
    fn reseal_refuses_damaged_or_swapped_blobs() {
        let keys = Keys::from_master([5; 64]);
        let (old, new) = (keys.sealer(&[1; 32]), keys.sealer(&[2; 32]));
        let (a, b) = (b"chunk a".to_vec(), b"chunk b".to_vec());
        let sealed = seal_blob(&old, BlobKind::Data, keys.chunk_id(&a), &a, 3);
        let pack = Id([7; 32]);
        let entry = |kind, id| PackEntry {
            kind,
            id,
            offset: 0,
            length: sealed.bytes.len() as u32,
            raw_len: a.len() as u32,
        };
        let right = entry(BlobKind::Data, keys.chunk_id(&a));
        let moved = reseal_blob(&old, &new, &right, &sealed.bytes, &pack).unwrap();
        assert_eq!(
            open_blob(&keys, &new, &right, &moved.bytes, &pack).unwrap(),
            a
        );

        let mut damaged = sealed.bytes.to_vec();
        damaged[crate::crypto::NONCE_LEN + 1] ^= 1;
        assert!(reseal_blob(&old, &new, &right, &damaged, &pack).is_err());
        let other_id = entry(BlobKind::Data, keys.chunk_id(&b));
        match reseal_blob(&old, &new, &other_id, &sealed.bytes, &pack) {
            Err(e) => assert!(e.to_string().contains("in pack data/07"), "{e}"),
            Ok(_) => panic!("a blob opened under another id"),
        }
        let other_kind = entry(BlobKind::Table, keys.chunk_id(&a));
        assert!(reseal_blob(&old, &new, &other_kind, &sealed.bytes, &pack).is_err());
        assert!(reseal_blob(&new, &new, &right, &sealed.bytes, &pack).is_err());
    }
}
