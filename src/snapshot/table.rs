//! Disk chunk tables: the pieces of one table span of a disk, in disk order, each a chunk
//! or a hole. A table is itself a content-addressed blob, so an unchanged span costs
//! nothing in the next snapshot.

use crate::{Error, Id, Result};

const TABLE_VERSION: u8 = 1;

/// One run of a disk: `len` bytes that are either a chunk or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub id: Option<Id>,
}

/// The pieces of one table span, in disk order.
/// Encoding: `version u8 | count u32 | (kind u8 | len u32 [| id 32 if kind = 1])*`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkTable {
    pub extents: Vec<Extent>,
}

impl ChunkTable {
    pub fn push(&mut self, e: Extent) {
        if e.id.is_none() {
            if let Some(last) = self.extents.last_mut() {
                if last.id.is_none() && last.len as u64 + e.len as u64 <= u32::MAX as u64 {
                    last.len += e.len;
                    return;
                }
            }
        }
        self.extents.push(e);
    }

    pub fn is_hole(&self) -> bool {
        self.extents.iter().all(|e| e.id.is_none())
    }

    pub fn len(&self) -> u64 {
        self.extents.iter().map(|e| e.len as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.extents.len() * 37);
        out.push(TABLE_VERSION);
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            out.push(e.id.is_some() as u8);
            out.extend_from_slice(&e.len.to_le_bytes());
            if let Some(id) = e.id {
                out.extend_from_slice(&id.0);
            }
        }
        out
    }

    pub fn decode(b: &[u8], name: &str) -> Result<ChunkTable> {
        let bad = |d: &str| Error::corrupt(name, format!("chunk table: {d}"));
        if b.first() != Some(&TABLE_VERSION) || b.len() < 5 {
            return Err(bad("unknown version or too short"));
        }
        let n = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes")) as usize;
        let mut extents = Vec::with_capacity(n.min(1 << 20));
        let mut pos = 5;
        for _ in 0..n {
            let kind = *b.get(pos).ok_or_else(|| bad("truncated"))?;
            let len = b.get(pos + 1..pos + 5).ok_or_else(|| bad("truncated"))?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
            pos += 5;
            let id = match kind {
                0 => None,
                1 => {
                    let id = b.get(pos..pos + 32).and_then(Id::from_slice);
                    pos += 32;
                    Some(id.ok_or_else(|| bad("truncated"))?)
                }
                _ => return Err(bad("unknown extent kind")),
            };
            extents.push(Extent { len, id });
        }
        if pos != b.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(ChunkTable { extents })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip() {
        let mut t = ChunkTable::default();
        t.push(Extent { len: 10, id: None });
        t.push(Extent { len: 5, id: None });
        t.push(Extent {
            len: 7,
            id: Some(Id([3; 32])),
        });
        assert_eq!(t.extents.len(), 2);
        assert_eq!(t.len(), 22);
        let b = t.encode();
        assert_eq!(ChunkTable::decode(&b, "t").unwrap(), t);
        assert!(ChunkTable::decode(&b[..b.len() - 1], "t").is_err());
    }
}
