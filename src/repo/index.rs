//! Index files: which blobs each pack holds. One or more per backup session, immutable.
//!
//! Payload (inside the sealed file envelope), file format version 2:
//! `u64 created (ns since the epoch)`, then `u32 pack count`, then per pack
//! `pack id(32) | salt(32) | u32 entry count | entries`, each entry a [`PackEntry`]
//! (45 bytes). Version 1 is the same without `created` (read as 0).
//!
//! `created` orders copies: when a blob is stored twice (a backup rewrote it next to new
//! data so the newest snapshot reads contiguously), the copy named by the newest index
//! file is the one restores read and prune keeps.

use super::pack::{PackEntry, ENTRY_LEN};
use crate::{Error, Id, Result};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexPack {
    pub pack: Id,
    pub salt: [u8; 32],
    pub entries: Vec<PackEntry>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
    /// When it was written (ns since the epoch); 0 for version 1 files.
    pub created: u64,
}

impl IndexFile {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.entries.len()).sum()
    }

    /// The version 2 payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(12 + self.packs.len() * 68 + self.blob_count() * ENTRY_LEN);
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.pack.0);
            out.extend_from_slice(&p.salt);
            out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
            for e in &p.entries {
                e.encode_into(&mut out);
            }
        }
        out
    }

    /// Decodes the payload of a file of format `version` (1 or 2).
    pub fn decode(b: &[u8], version: u16, name: &str) -> Result<IndexFile> {
        let bad = || Error::corrupt(name, "index payload is malformed");
        let mut pos = 0usize;
        let created = if version >= 2 {
            pos = 8;
            u64::from_le_bytes(b.get(..8).ok_or_else(bad)?.try_into().expect("8 bytes"))
        } else {
            0
        };
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = b.get(pos..pos + n).ok_or_else(bad)?;
            pos += n;
            Ok(s)
        };
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize;
        let npacks = u32_of(take(4)?);
        let mut packs = Vec::with_capacity(npacks.min(1 << 16));
        for _ in 0..npacks {
            let pack = Id::from_slice(take(32)?).ok_or_else(bad)?;
            let salt: [u8; 32] = take(32)?.try_into().expect("32 bytes");
            let n = u32_of(take(4)?);
            let mut entries = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                entries.push(PackEntry::decode(take(ENTRY_LEN)?).ok_or_else(bad)?);
            }
            packs.push(IndexPack {
                pack,
                salt,
                entries,
            });
        }
        if pos != b.len() {
            return Err(bad());
        }
        Ok(IndexFile { packs, created })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::BlobKind;

    #[test]
    fn round_trip() {
        let e = PackEntry {
            kind: BlobKind::Table,
            id: Id([9; 32]),
            offset: 40,
            length: 100,
            raw_len: 90,
        };
        let f = IndexFile {
            packs: vec![IndexPack {
                pack: Id([1; 32]),
                salt: [2; 32],
                entries: vec![e, e],
            }],
            created: 1_795_000_000_000_000_000,
        };
        let b = f.encode();
        assert_eq!(IndexFile::decode(&b, 2, "x").unwrap(), f);
        assert!(IndexFile::decode(&b[..b.len() - 1], 2, "x").is_err());
        // Version 1: the same without the creation time.
        let v1 = IndexFile::decode(&b[8..], 1, "x").unwrap();
        assert_eq!((v1.created, v1.packs.clone()), (0, f.packs.clone()));
    }
}
