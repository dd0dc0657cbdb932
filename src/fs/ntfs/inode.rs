//! A file as the reader sees it: its base MFT record plus the extension records its
//! `$ATTRIBUTE_LIST` names, the attribute extents merged, and the standard information and
//! names decoded.
//!
//! Extension records are trusted only if they are in use, point back at the base record
//! (with its sequence number) and carry the sequence number the list expects; a stale one
//! is refused. The MFT's own `$DATA` is bootstrapped the same way, extent by extent, each
//! extension record being read through the part of the MFT already mapped.

use super::attr::{parse_list, Content, Data};
use super::boot::Geometry;
use super::record::{record_number, record_seq, Body, RawAttr, Record, REC_IS_DIR};
use super::Ntfs;
use crate::blockdev::BlockRead;
use crate::fs::{FileType, Le, Time};
use crate::{Error, Result};
use std::collections::HashSet;

pub const AT_STANDARD_INFORMATION: u32 = 0x10;
pub const AT_ATTRIBUTE_LIST: u32 = 0x20;
pub const AT_FILE_NAME: u32 = 0x30;
pub const AT_VOLUME_NAME: u32 = 0x60;
pub const AT_VOLUME_INFORMATION: u32 = 0x70;
pub const AT_DATA: u32 = 0x80;
pub const AT_INDEX_ROOT: u32 = 0x90;
pub const AT_INDEX_ALLOCATION: u32 = 0xA0;
pub const AT_BITMAP: u32 = 0xB0;
pub const AT_REPARSE_POINT: u32 = 0xC0;

pub const FILE_ATTR_READONLY: u32 = 0x0001;
pub const FILE_ATTR_SYSTEM: u32 = 0x0004;
pub const FILE_ATTR_ENCRYPTED: u32 = 0x4000;

/// Namespaces of a `$FILE_NAME`.
pub const NS_DOS: u8 = 2;

/// Extension records one file may have (a cap; 200 hard links need about 20).
const MAX_EXTENSIONS: usize = 8192;
/// Largest `$ATTRIBUTE_LIST` value accepted.
const MAX_LIST: u64 = 4 << 20;

/// A `$FILE_NAME`: one name of the file in one directory.
#[derive(Clone, Debug)]
pub struct FileName {
    pub parent: u64,
    pub namespace: u8,
    pub name: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct StdInfo {
    pub mtime: Time,
    pub atime: Time,
    /// The MFT change time: what Unix calls ctime.
    pub ctime: Time,
    pub attrs: u32,
}

/// What kind of file a record is, decided once when it is loaded.
#[derive(Clone, Debug)]
pub enum Special {
    None,
    /// A symlink (reparse point or Interix link) and its target.
    Link(Vec<u8>),
    /// An Interix device node.
    Dev(FileType, u32, u32),
}

pub struct Inode {
    pub ino: u64,
    pub seq: u16,
    pub dir: bool,
    pub std: StdInfo,
    pub names: Vec<FileName>,
    /// Every attribute, extents merged, in the order found.
    pub attrs: Vec<(u32, Data)>,
    pub reparse_tag: Option<u32>,
    pub special: Special,
}

impl Inode {
    pub fn find(&self, ty: u32, name: &[u8]) -> Option<&Data> {
        self.attrs
            .iter()
            .find(|(t, d)| *t == ty && d.name == name)
            .map(|(_, d)| d)
    }

    pub fn kind(&self) -> FileType {
        match self.special {
            Special::Link(_) => FileType::Symlink,
            Special::Dev(k, _, _) => k,
            Special::None if self.dir => FileType::Dir,
            Special::None => FileType::File,
        }
    }

    /// The cache weight: about one unit per run or 64 bytes kept.
    pub fn weight(&self) -> usize {
        self.attrs
            .iter()
            .map(|(_, d)| match &d.content {
                Content::Resident(v) => 1 + v.len() / 64,
                Content::Runs(r) => 1 + r.len(),
            })
            .sum::<usize>()
            + self.names.len()
    }
}

/// FILETIME (100 ns units since 1601-01-01) → Unix seconds and nanoseconds.
pub fn filetime(ft: u64) -> Time {
    const EPOCH_DIFF: i128 = 116_444_736_000_000_000;
    let t = ft as i128 - EPOCH_DIFF;
    Time {
        sec: t.div_euclid(10_000_000) as i64,
        nsec: (t.rem_euclid(10_000_000) * 100) as u32,
    }
}

fn parse_std(v: &[u8], what: &str) -> Result<StdInfo> {
    let le = Le::new(v, what);
    Ok(StdInfo {
        mtime: filetime(le.u64(0x08)?),
        ctime: filetime(le.u64(0x10)?),
        atime: filetime(le.u64(0x18)?),
        attrs: le.u32(0x20)?,
    })
}

pub fn parse_file_name(v: &[u8], what: &str) -> Result<FileName> {
    let le = Le::new(v, what);
    let len = le.u8(0x40)? as usize;
    let units: Vec<u16> = le
        .bytes(0x42, len * 2)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(FileName {
        parent: le.u64(0)?,
        namespace: le.u8(0x41)?,
        name: super::utf16_to_utf8(&units),
    })
}

/// Groups extents by (type, name) and merges the non-resident ones; resident attributes
/// (several `$FILE_NAME`s share type and name) each stand alone.
fn merge(raw: Vec<RawAttr>, what: &str) -> Result<Vec<(u32, Data)>> {
    let mut groups: Vec<(u32, Vec<u8>, Vec<RawAttr>)> = Vec::new();
    let mut out_order: Vec<(u32, Option<RawAttr>, Option<usize>)> = Vec::new();
    for a in raw {
        match a.body {
            Body::Resident(_) => out_order.push((a.ty, Some(a), None)),
            Body::NonResident(_) => {
                if let Some(g) = groups.iter().position(|g| g.0 == a.ty && g.1 == a.name) {
                    groups[g].2.push(a);
                } else {
                    out_order.push((a.ty, None, Some(groups.len())));
                    groups.push((a.ty, a.name.clone(), vec![a]));
                }
            }
        }
    }
    let mut groups: Vec<Option<Vec<RawAttr>>> = groups.into_iter().map(|g| Some(g.2)).collect();
    let mut out = Vec::with_capacity(out_order.len());
    for (ty, res, group) in out_order {
        let ext = match (res, group) {
            (Some(a), _) => vec![a],
            (None, Some(g)) => groups.get_mut(g).and_then(Option::take).unwrap_or_default(),
            (None, None) => continue,
        };
        let w = format!("{what}: attribute 0x{ty:x}");
        out.push((ty, Data::from_extents(ext, &w)?));
    }
    Ok(out)
}

/// Reads the whole value of `d` (at most `cap` bytes).
pub fn value(dev: &dyn BlockRead, cluster: u64, d: &Data, cap: u64, what: &str) -> Result<Vec<u8>> {
    if let Content::Resident(v) = &d.content {
        return Ok(v.clone());
    }
    if d.size > cap {
        return Err(Error::Guest(format!(
            "{what}: {} bytes is more than the {cap} this reader accepts",
            d.size
        )));
    }
    let mut v = vec![0u8; d.size as usize];
    let n = d.read(dev, cluster, 0, &mut v, what)?;
    v.truncate(n);
    Ok(v)
}

/// Finds the `$MFT`'s unnamed `$DATA`, following its attribute list if it has one.
pub fn bootstrap_mft(dev: &dyn BlockRead, geo: &Geometry) -> Result<Data> {
    let cs = geo.cluster_size;
    let mut buf = vec![0u8; geo.record_size as usize];
    dev.read_at(geo.mft_lcn * cs, &mut buf)?;
    let rec = Record::parse(0, buf)?;
    if !rec.in_use() {
        return Err(Error::Guest(
            "NTFS: MFT record 0 ($MFT) is not in use".into(),
        ));
    }
    let raw = rec.attrs()?;
    let is_mft_data = |a: &RawAttr| a.ty == AT_DATA && a.name.is_empty();
    let mut ext: Vec<RawAttr> = raw.iter().filter(|a| is_mft_data(a)).cloned().collect();
    let what = "NTFS: $MFT $DATA";
    let mut mft = Data::from_extents(ext.clone(), what)?;
    let Some(list) = raw.iter().find(|a| a.ty == AT_ATTRIBUTE_LIST) else {
        return Ok(mft);
    };
    let list = Data::from_extents(vec![list.clone()], "NTFS: $MFT $ATTRIBUTE_LIST")?;
    let list = value(dev, cs, &list, MAX_LIST, "NTFS: $MFT $ATTRIBUTE_LIST")?;
    let mut entries = parse_list(&list, "NTFS: $MFT $ATTRIBUTE_LIST")?;
    entries.retain(|e| e.ty == AT_DATA && e.name.is_empty() && record_number(e.mref) != 0);
    entries.sort_by_key(|e| e.lowest_vcn);
    let mut seen = HashSet::new();
    for e in entries {
        let n = record_number(e.mref);
        if !seen.insert(n) {
            continue;
        }
        if seen.len() > MAX_EXTENSIONS {
            return Err(Error::Guest(format!(
                "{what}: more than {MAX_EXTENSIONS} extension records"
            )));
        }
        let off = n
            .checked_mul(geo.record_size as u64)
            .ok_or_else(|| Error::Guest(format!("{what}: extension record {n} past 2^64")))?;
        let mut buf = vec![0u8; geo.record_size as usize];
        if mft.read(dev, cs, off, &mut buf, what)? != buf.len() {
            return Err(Error::Guest(format!(
                "{what}: extension record {n} lies past the MFT's end"
            )));
        }
        let r = Record::parse(n, buf)?;
        if !r.in_use() || record_number(r.base) != 0 {
            return Err(Error::Guest(format!(
                "{what}: record {n} is not an extension of the MFT"
            )));
        }
        ext.extend(r.attrs()?.into_iter().filter(is_mft_data));
        mft = Data::from_extents(ext.clone(), what)?;
    }
    Ok(mft)
}

impl Ntfs {
    /// Reads and checks MFT record `n`.
    pub fn read_record(&self, n: u64) -> Result<Record> {
        if n >= self.records {
            return Err(Error::Guest(format!(
                "NTFS: MFT record {n} lies past the MFT's end ({} records)",
                self.records
            )));
        }
        let rs = self.geo.record_size as u64;
        let mut buf = vec![0u8; rs as usize];
        let what = format!("NTFS: MFT record {n}");
        let got = self
            .mft
            .read(&*self.dev, self.geo.cluster_size, n * rs, &mut buf, &what)?;
        if got != buf.len() {
            return Err(Error::Guest(format!("{what}: cut short by the MFT's end")));
        }
        Record::parse(n, buf)
    }

    /// Loads file `ino` (cached).
    pub fn inode(&self, ino: u64) -> Result<std::sync::Arc<Inode>> {
        if let Some(i) = self.cache_get(ino) {
            return Ok(i);
        }
        let i = std::sync::Arc::new(self.load(ino)?);
        self.cache_put(ino, i.clone());
        Ok(i)
    }

    fn load(&self, ino: u64) -> Result<Inode> {
        let what = format!("NTFS: MFT record {ino}");
        let rec = self.read_record(ino)?;
        if !rec.in_use() {
            return Err(Error::Guest(format!(
                "{what} is not in use (a deleted file)"
            )));
        }
        if rec.base != 0 {
            return Err(Error::Guest(format!(
                "{what} is an extension of record {}, not a file",
                record_number(rec.base)
            )));
        }
        let mut raw = rec.attrs()?;
        if let Some(i) = raw.iter().position(|a| a.ty == AT_ATTRIBUTE_LIST) {
            let lw = format!("{what}: $ATTRIBUTE_LIST");
            let list = Data::from_extents(vec![raw.remove(i)], &lw)?;
            let list = value(&*self.dev, self.geo.cluster_size, &list, MAX_LIST, &lw)?;
            let mut seen = HashSet::new();
            seen.insert(ino);
            let mut refs = Vec::new();
            for e in parse_list(&list, &lw)? {
                if seen.insert(record_number(e.mref)) {
                    refs.push(e.mref);
                }
            }
            if refs.len() > MAX_EXTENSIONS {
                return Err(Error::Guest(format!(
                    "{lw}: more than {MAX_EXTENSIONS} extension records"
                )));
            }
            for mref in refs {
                let n = record_number(mref);
                let r = self.read_record(n)?;
                let ok = r.in_use()
                    && record_number(r.base) == ino
                    && (record_seq(r.base) == 0 || record_seq(r.base) == rec.seq)
                    && (record_seq(mref) == 0 || record_seq(mref) == r.seq);
                if !ok {
                    return Err(Error::Guest(format!(
                        "{lw}: record {n} is not a current extension of this file"
                    )));
                }
                raw.extend(r.attrs()?.into_iter().filter(|a| a.ty != AT_ATTRIBUTE_LIST));
            }
        }
        let attrs = merge(raw, &what)?;
        let mut std = StdInfo::default();
        let mut names = Vec::new();
        for (ty, d) in &attrs {
            match (*ty, &d.content) {
                (AT_STANDARD_INFORMATION, Content::Resident(v)) => {
                    std = parse_std(v, &format!("{what}: $STANDARD_INFORMATION"))?
                }
                (AT_FILE_NAME, Content::Resident(v)) => {
                    names.push(parse_file_name(v, &format!("{what}: $FILE_NAME"))?)
                }
                _ => {}
            }
        }
        let dir = rec.flags & REC_IS_DIR != 0
            && attrs
                .iter()
                .any(|(t, d)| *t == AT_INDEX_ROOT && d.name == b"$I30");
        let mut inode = Inode {
            ino,
            seq: rec.seq,
            dir,
            std,
            names,
            attrs,
            reparse_tag: None,
            special: Special::None,
        };
        self.classify(&mut inode)?;
        Ok(inode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes() {
        assert_eq!(filetime(116_444_736_000_000_000), Time { sec: 0, nsec: 0 });
        assert_eq!(
            filetime(116_444_736_000_000_001),
            Time { sec: 0, nsec: 100 }
        );
        assert_eq!(filetime(0).sec, -11_644_473_600);
        let t = filetime(116_444_735_999_999_999);
        assert_eq!((t.sec, t.nsec), (-1, 999_999_900));
    }
}
