//! The 40-byte header every pack, index and snapshot file starts with, and the payload
//! framing (a compression byte before the data) shared by blobs and whole files.

use crate::crypto::{random_bytes, Keys, Sealer, SALT_LEN};
use crate::{Error, Result};

/// Format version of packs, snapshots and `policies` written by this build. Index files
/// are at version 2 (they record when they were written, see `index.rs`); version 1 index
/// files are still read.
pub const HEADER_LEN: usize = 40;

pub const COMP_NONE: u8 = 0;
pub const COMP_ZSTD: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Pack,
    Index,
    Snapshot,
    Policies,
    /// A two-phase prune's record of what it would delete.
    Pending,
}

impl FileKind {
    /// The version this build writes (and the newest it reads) for this kind.
    pub fn version(self) -> u16 {
        match self {
            FileKind::Index => 2,
            _ => 1,
        }
    }

    fn magic(self) -> &'static [u8; 4] {
        match self {
            FileKind::Pack => b"CRNP",
            FileKind::Index => b"CRNI",
            FileKind::Snapshot => b"CRNS",
            FileKind::Policies => b"CRNL",
            FileKind::Pending => b"CRNG",
        }
    }
}

/// `magic(4) | version u16 LE | cipher u8 | reserved u8 | salt(32)`.
#[derive(Clone, Copy)]
pub struct FileHeader {
    pub kind: FileKind,
    pub version: u16,
    pub cipher: u8,
    pub salt: [u8; SALT_LEN],
}

impl FileHeader {
    pub fn new(kind: FileKind, keys: &Keys) -> FileHeader {
        FileHeader {
            kind,
            version: kind.version(),
            cipher: keys.cipher(),
            salt: random_bytes(),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(self.kind.magic());
        h[4..6].copy_from_slice(&self.version.to_le_bytes());
        h[6] = self.cipher;
        h[8..].copy_from_slice(&self.salt);
        h
    }

    pub fn decode(kind: FileKind, b: &[u8], keys: &Keys, name: &str) -> Result<FileHeader> {
        if b.len() < HEADER_LEN || &b[..4] != kind.magic() {
            return Err(Error::corrupt(
                name,
                "not a cairn file of this kind (bad magic or too short)",
            ));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version == 0 || version > kind.version() {
            return Err(Error::corrupt(
                name,
                format!(
                    "format version {version}, this cairn reads versions 1 to {}; use a newer cairn",
                    kind.version()
                ),
            ));
        }
        if b[6] != keys.cipher() {
            return Err(Error::corrupt(
                name,
                format!(
                    "sealed with cipher id {}, but the repository uses {}",
                    b[6],
                    keys.cipher()
                ),
            ));
        }
        Ok(FileHeader {
            kind,
            version,
            cipher: b[6],
            salt: b[8..HEADER_LEN].try_into().expect("32 bytes"),
        })
    }

    pub fn sealer(&self, keys: &Keys) -> Sealer {
        keys.sealer(&self.salt)
    }
}

/// Compresses `data` with zstd when that makes it smaller; returns the compression byte and
/// the bytes to store.
pub fn compress(data: &[u8], level: i32) -> (u8, std::borrow::Cow<'_, [u8]>) {
    thread_local! {
        // A zstd context allocates and clears hundreds of KiB of tables: make one per
        // thread and level, not one per chunk.
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    if level > 0 {
        let compressed = CCTX.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_none_or(|(l, _)| *l != level) {
                *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
            }
            c.as_mut()?.1.compress(data).ok()
        });
        if let Some(c) = compressed.filter(|c| c.len() < data.len()) {
            return (COMP_ZSTD, c.into());
        }
    }
    (COMP_NONE, data.into())
}

/// Largest buffer [`decompress`] reserves on the word of `raw_len` alone: the largest chunk
/// (a chunker's `max_size` is at most 16 MiB), so every data blob still decompresses in one
/// call into a buffer of exactly its size.
const MAX_RESERVE: usize = 16 << 20;

/// Undoes [`compress`]; `raw_len` is the expected plaintext length.
///
/// `raw_len` comes from a file's trailer (never authenticated) or an index entry (not
/// authenticated in an unencrypted repository), so it must not size an allocation: a damaged
/// trailer of 0xffffffff used to reserve 4 GiB before zstd produced a byte. Above
/// [`MAX_RESERVE`] (only a chunk table of very small chunks or a very large index file is
/// that big) the buffer grows with what zstd really produces, and reading stops one byte
/// past `raw_len`.
pub fn decompress(payload: &[u8], raw_len: usize, name: &dyn Fn() -> String) -> Result<Vec<u8>> {
    let (&comp, data) = payload
        .split_first()
        .ok_or_else(|| Error::corrupt(name(), "empty payload"))?;
    let zstd_err = |e: std::io::Error| Error::corrupt(name(), format!("zstd: {e}"));
    let out = match comp {
        COMP_NONE => data.to_vec(),
        COMP_ZSTD if raw_len <= MAX_RESERVE => {
            thread_local! {
                // One decompression context per thread: making one per chunk was 6 % of a
                // changed-block backup's time (perf, BENCHMARKS.md G).
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DCTX.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut().expect("just made").decompress(data, raw_len)
            })
            .map_err(zstd_err)?
        }
        COMP_ZSTD => {
            use std::io::Read;
            let mut out = Vec::with_capacity(MAX_RESERVE);
            zstd::stream::read::Decoder::with_buffer(data)
                .and_then(|d| {
                    d.take((raw_len as u64).saturating_add(1))
                        .read_to_end(&mut out)
                })
                .map_err(zstd_err)?;
            out
        }
        other => {
            return Err(Error::corrupt(
                name(),
                format!("unknown compression id {other}"),
            ))
        }
    };
    if out.len() != raw_len {
        return Err(Error::corrupt(
            name(),
            format!("decoded {} bytes, expected {raw_len}", out.len()),
        ));
    }
    Ok(out)
}

/// A whole index or snapshot file: header, then one sealed message of `comp | payload`.
pub fn encode_file(kind: FileKind, keys: &Keys, payload: &[u8], level: i32) -> Vec<u8> {
    let header = FileHeader::new(kind, keys);
    let h = header.encode();
    let (comp, data) = compress(payload, level);
    let sealed = header.sealer(keys).seal_parts(&[&[comp], &data], &h);
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len() + 4);
    out.extend_from_slice(&h);
    out.extend_from_slice(&sealed);
    // The plaintext length, so decompression can allocate exactly; authenticated indirectly
    // because decompress checks it against what zstd produces.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out
}

pub fn decode_file(kind: FileKind, keys: &Keys, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    Ok(decode_file_versioned(kind, keys, bytes, name)?.1)
}

/// [`decode_file`], also returning the file's format version.
pub fn decode_file_versioned(
    kind: FileKind,
    keys: &Keys,
    bytes: &[u8],
    name: &str,
) -> Result<(u16, Vec<u8>)> {
    let header = FileHeader::decode(kind, bytes, keys, name)?;
    if bytes.len() < HEADER_LEN + 4 {
        return Err(Error::corrupt(name, "file is truncated"));
    }
    let (body, len) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - 4);
    let raw_len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let what = || name.to_string();
    let payload = header
        .sealer(keys)
        .open(body, &bytes[..HEADER_LEN], &what)?;
    Ok((header.version, decompress(&payload, raw_len, &what)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip() {
        for keys in [Keys::unencrypted(), Keys::from_master([3; 64])] {
            let payload = vec![42u8; 10_000];
            let f = encode_file(FileKind::Index, &keys, &payload, 3);
            assert!(f.len() < 1000, "compressible payload is compressed");
            assert_eq!(
                decode_file(FileKind::Index, &keys, &f, "x").unwrap(),
                payload
            );
            assert!(decode_file(FileKind::Snapshot, &keys, &f, "x").is_err());
            let mut newer = f.clone();
            newer[4] = 3;
            let e = decode_file(FileKind::Index, &keys, &newer, "x").unwrap_err();
            assert!(e.to_string().contains("format version 3"), "{e}");
        }
    }

    /// A damaged length must not size an allocation: a trailer of 0xffffffff used to
    /// reserve 4 GiB. Payloads above the reserve still round-trip, and a wrong length is
    /// still refused.
    #[test]
    fn raw_len_does_not_size_the_allocation() {
        let what = || "x".to_string();
        let (comp, small) = compress(&[7u8; 5000], 3);
        let small = [&[comp][..], &small].concat();
        for raw_len in [u32::MAX as usize, MAX_RESERVE + 1, usize::MAX] {
            crate::testalloc::reset();
            assert!(decompress(&small, raw_len, &what).is_err());
            assert!(crate::testalloc::peak() <= 2 * MAX_RESERVE, "{raw_len}");
        }
        let big: Vec<u8> = (0..MAX_RESERVE as u32 + 300_000)
            .map(|i| (i / 4096) as u8 ^ (i % 7) as u8)
            .collect();
        let (comp, data) = compress(&big, 1);
        assert_eq!(comp, COMP_ZSTD);
        let payload = [&[comp][..], &data].concat();
        assert_eq!(decompress(&payload, big.len(), &what).unwrap(), big);
        for wrong in [big.len() - 1, big.len() + 1] {
            assert!(decompress(&payload, wrong, &what).is_err());
        }
    }
}
