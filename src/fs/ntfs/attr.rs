//! Attribute content: runlists (mapping pairs), attributes split into several extents
//! (through `$ATTRIBUTE_LIST`), and reading an attribute's bytes.
//!
//! A runlist is a chain of (length, LCN delta) pairs, each header byte giving the byte
//! counts of both; the delta is signed and relative to the previous run's LCN, and a pair
//! without an offset is a sparse run (a hole). Reading honours the three sizes of a
//! non-resident attribute: bytes past the initialized size read as zeros, nothing past the
//! data size is read, the allocated size only bounds the runs.

use super::record::{Body, NonResident, RawAttr};
use super::utf16_to_utf8;
use crate::blockdev::BlockRead;
use crate::fs::{Le, Mapping};
use crate::{Error, Result};

/// One run: `len` clusters from `vcn`, stored at `lcn` (None: sparse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub vcn: u64,
    pub len: u64,
    pub lcn: Option<u64>,
}

/// Attribute flags.
pub const FLAG_COMPRESSED: u16 = 0x00FF;
pub const FLAG_ENCRYPTED: u16 = 0x4000;

/// Decodes mapping pairs starting at VCN `vcn`, keeping at most `cap` runs.
pub fn decode_runs(b: &[u8], mut vcn: u64, cap: usize, what: &str) -> Result<Vec<Run>> {
    let bad = |m: &str| Error::Guest(format!("{what}: runlist {m}"));
    let mut out = Vec::new();
    let mut lcn: i64 = 0;
    let mut at = 0usize;
    loop {
        let Some(&h) = b.get(at) else {
            return Err(bad("runs past the end of its attribute"));
        };
        if h == 0 {
            return Ok(out);
        }
        let (nl, no) = ((h & 0x0F) as usize, (h >> 4) as usize);
        if nl == 0 || nl > 8 || no > 8 {
            return Err(bad(&format!("has a bad header byte 0x{h:02x}")));
        }
        let field = |from: usize, n: usize| -> Result<&[u8]> {
            from.checked_add(n)
                .and_then(|e| b.get(from..e))
                .ok_or_else(|| bad("runs past the end of its attribute"))
        };
        let len_b = field(at + 1, nl)?;
        let mut len = 0u64;
        for (i, &x) in len_b.iter().enumerate() {
            len |= (x as u64) << (8 * i);
        }
        if len == 0 || len >> 62 != 0 {
            return Err(bad(&format!("has a run of {len} clusters")));
        }
        let run_lcn = if no == 0 {
            None
        } else {
            let off_b = field(at + 1 + nl, no)?;
            let mut d = 0u64;
            for (i, &x) in off_b.iter().enumerate() {
                d |= (x as u64) << (8 * i);
            }
            // Sign-extend from the top byte.
            let shift = 64 - 8 * no as u32;
            let d = ((d << shift) as i64) >> shift;
            lcn = lcn
                .checked_add(d)
                .filter(|l| *l >= 0)
                .ok_or_else(|| bad("steps to a negative cluster"))?;
            Some(lcn as u64)
        };
        if out.len() >= cap {
            return Err(bad(&format!("has more than {cap} runs")));
        }
        out.push(Run {
            vcn,
            len,
            lcn: run_lcn,
        });
        vcn = vcn
            .checked_add(len)
            .ok_or_else(|| bad("runs past VCN 2^64"))?;
        at += 1 + nl + no;
    }
}

/// An attribute's content, its extents merged.
#[derive(Clone, Debug)]
pub struct Data {
    /// Name (UTF-8; empty for the unnamed attribute).
    pub name: Vec<u8>,
    pub flags: u16,
    pub size: u64,
    pub init_size: u64,
    pub content: Content,
}

#[derive(Clone, Debug)]
pub enum Content {
    Resident(Vec<u8>),
    Runs(Vec<Run>),
}

impl Data {
    /// Merges the extents of one attribute (same type and name), which must together
    /// cover its VCNs from 0 without gaps or overlaps.
    pub fn from_extents(mut ext: Vec<RawAttr>, what: &str) -> Result<Data> {
        let Some(first) = ext.first() else {
            return Err(Error::Guest(format!("{what}: attribute without extents")));
        };
        let (name, flags) = (first.name.clone(), first.flags);
        if ext.len() == 1 && matches!(first.body, Body::Resident(_)) {
            if let Some(RawAttr {
                body: Body::Resident(v),
                ..
            }) = ext.pop()
            {
                return Ok(Data {
                    name,
                    flags,
                    size: v.len() as u64,
                    init_size: v.len() as u64,
                    content: Content::Resident(v),
                });
            }
        }
        let mut parts: Vec<NonResident> = Vec::with_capacity(ext.len());
        for e in ext {
            match e.body {
                Body::NonResident(n) => parts.push(n),
                Body::Resident(_) => {
                    return Err(Error::Guest(format!(
                        "{what}: an attribute is both resident and non-resident"
                    )))
                }
            }
        }
        parts.sort_by_key(|p| p.lowest_vcn);
        let Some(p0) = parts.first() else {
            return Err(Error::Guest(format!("{what}: attribute without extents")));
        };
        let (size, init, alloc) = (p0.data_size, p0.init_size, p0.alloc_size);
        let mut runs: Vec<Run> = Vec::new();
        let mut next = 0u64;
        for p in parts {
            if p.lowest_vcn != next {
                return Err(Error::Guest(format!(
                    "{what}: extent starts at VCN {}, expected {next}",
                    p.lowest_vcn
                )));
            }
            next = p.highest_vcn.wrapping_add(1);
            if runs.len() + p.runs.len() > super::record::MAX_RUNS {
                return Err(Error::Guest(format!("{what}: more than 2^20 runs")));
            }
            runs.extend(p.runs);
        }
        if size > alloc || init > size {
            return Err(Error::Guest(format!(
                "{what}: sizes out of order (initialized {init}, data {size}, allocated {alloc})"
            )));
        }
        Ok(Data {
            name,
            flags,
            size,
            init_size: init,
            content: Content::Runs(runs),
        })
    }

    pub fn compressed(&self) -> bool {
        matches!(self.content, Content::Runs(_)) && self.flags & FLAG_COMPRESSED != 0
    }

    pub fn encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    pub fn runs(&self) -> &[Run] {
        match &self.content {
            Content::Runs(r) => r,
            Content::Resident(_) => &[],
        }
    }

    /// Reads at `offset` into `buf`; returns the bytes read (fewer only at the end).
    pub fn read(
        &self,
        dev: &dyn BlockRead,
        cluster: u64,
        offset: u64,
        buf: &mut [u8],
        what: &str,
    ) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - offset) as usize;
        let runs = match &self.content {
            Content::Resident(v) => {
                let src = v.get(offset as usize..offset as usize + n).ok_or_else(|| {
                    Error::Guest(format!("{what}: resident value shorter than its size"))
                })?;
                buf[..n].copy_from_slice(src);
                return Ok(n);
            }
            Content::Runs(r) => r,
        };
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let want = n - done;
            if pos >= self.init_size {
                buf[done..n].fill(0);
                break;
            }
            let vcn = pos / cluster;
            let i = runs.partition_point(|r| r.vcn + r.len <= vcn);
            let run = runs.get(i).filter(|r| r.vcn <= vcn).ok_or_else(|| {
                Error::Guest(format!("{what}: byte {pos} lies in no run (VCN {vcn})"))
            })?;
            let run_end = (run.vcn + run.len).saturating_mul(cluster);
            let take = (want as u64).min(run_end - pos).min(self.init_size - pos) as usize;
            let dst = &mut buf[done..done + take];
            match run.lcn {
                None => dst.fill(0),
                Some(lcn) => {
                    let disk = lcn
                        .checked_add(vcn - run.vcn)
                        .and_then(|c| c.checked_mul(cluster))
                        .and_then(|o| o.checked_add(pos % cluster))
                        .ok_or_else(|| {
                            Error::Guest(format!("{what}: run at cluster {lcn} past 2^64"))
                        })?;
                    dev.read_at(disk, dst)?;
                }
            }
            done += take;
        }
        Ok(n)
    }

    /// The content as pieces covering `0..size`: runs (sparse ones as holes), the part past
    /// the initialized size as not-data, resident content as one piece without a disk
    /// offset.
    pub fn mappings(&self, cluster: u64) -> Vec<Mapping> {
        let mut out = Vec::new();
        if self.size == 0 {
            return out;
        }
        let runs = match &self.content {
            Content::Resident(_) => {
                out.push(Mapping {
                    file_offset: 0,
                    len: self.size,
                    disk_offset: None,
                    data: true,
                });
                return out;
            }
            Content::Runs(r) => r,
        };
        for r in runs {
            let start = r.vcn.saturating_mul(cluster);
            if start >= self.size {
                break;
            }
            let len = r.len.saturating_mul(cluster);
            let disk = r.lcn.and_then(|l| l.checked_mul(cluster));
            let end = start.saturating_add(len);
            // Split at the initialized size: what lies past it reads as zeros.
            let cut = if disk.is_some() {
                self.init_size.clamp(start, end)
            } else {
                end
            };
            if cut > start {
                out.push(Mapping {
                    file_offset: start,
                    len: cut - start,
                    disk_offset: disk,
                    data: disk.is_some(),
                });
            }
            if end > cut {
                out.push(Mapping {
                    file_offset: cut,
                    len: end - cut,
                    disk_offset: disk.and_then(|d| d.checked_add(cut - start)),
                    data: false,
                });
            }
        }
        out
    }
}

/// One `$ATTRIBUTE_LIST` entry: where an extent of an attribute lives.
pub struct ListEntry {
    pub ty: u32,
    pub name: Vec<u8>,
    pub lowest_vcn: u64,
    /// Reference (record number and sequence) of the record holding the extent.
    pub mref: u64,
}

/// Parses the value of an `$ATTRIBUTE_LIST` (entries of at least 26 bytes each).
pub fn parse_list(b: &[u8], what: &str) -> Result<Vec<ListEntry>> {
    let le = Le::new(b, what);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < b.len() {
        let len = le.u16(at + 4)? as usize;
        if len < 0x1A {
            return Err(Error::Guest(format!(
                "{what}: entry at byte {at} has length {len}"
            )));
        }
        let e = Le::new(le.bytes(at, len)?, what);
        let nlen = e.u8(6)? as usize;
        let noff = e.u8(7)? as usize;
        let units: Vec<u16> = e
            .bytes(noff, nlen * 2)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        out.push(ListEntry {
            ty: e.u32(0)?,
            name: utf16_to_utf8(&units),
            lowest_vcn: e.u64(8)?,
            mref: e.u64(0x10)?,
        });
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runlists() {
        // 0x21: 1-byte length, 2-byte offset. 0x11 with a negative delta. 0x01: sparse.
        let b = [0x21, 0x10, 0x00, 0x01, 0x11, 0x05, 0xF0, 0x01, 0x08, 0x00];
        let r = decode_runs(&b, 0, 100, "t").unwrap();
        assert_eq!(
            r,
            vec![
                Run {
                    vcn: 0,
                    len: 16,
                    lcn: Some(256)
                },
                Run {
                    vcn: 16,
                    len: 5,
                    lcn: Some(240)
                },
                Run {
                    vcn: 21,
                    len: 8,
                    lcn: None
                },
            ]
        );
        assert!(
            decode_runs(&[0x11, 0x01, 0x80, 0x00], 0, 10, "t").is_err(),
            "negative LCN"
        );
        assert!(decode_runs(&[0x21, 0x01], 0, 10, "t").is_err(), "truncated");
        assert!(
            decode_runs(&[0x01, 0x01, 0x01, 0x01, 0], 0, 1, "t").is_err(),
            "cap"
        );
        assert!(
            decode_runs(&[0x01, 0x00, 0], 0, 1, "t").is_err(),
            "zero length"
        );
    }

    #[test]
    fn reads_honour_sizes() {
        let dev = crate::blockdev::MemDisk((0..=255u8).cycle().take(8192).collect());
        let d = Data {
            name: Vec::new(),
            flags: 0,
            size: 3000,
            init_size: 1500,
            content: Content::Runs(vec![
                Run {
                    vcn: 0,
                    len: 1,
                    lcn: Some(2),
                },
                Run {
                    vcn: 1,
                    len: 1,
                    lcn: None,
                },
                Run {
                    vcn: 2,
                    len: 1,
                    lcn: Some(1),
                },
            ]),
        };
        let mut buf = vec![9u8; 4000];
        assert_eq!(d.read(&dev, 1024, 0, &mut buf, "t").unwrap(), 3000);
        assert_eq!(buf[0], 0); // byte 2048 of the device
        assert_eq!(buf[1023], 255);
        assert!(buf[1024..3000].iter().all(|&b| b == 0));
        let m = d.mappings(1024);
        assert_eq!(m.len(), 3);
        assert!(m[0].data && !m[1].data && !m[2].data);
    }
}
