//! The primary superblock (sector 0 of AG 0) and the geometry derived from it: block and
//! sector sizes, allocation groups, inode size and density, directory block size, and the
//! feature bits that change on-disk formats.
//!
//! Addresses: XFS numbers blocks per allocation group. A "filesystem block number" (as in
//! extent records and long btree pointers) is `agno << agblklog | agbno`, with a gap after
//! each AG's `agblocks` when `agblocks` is not a power of two; the byte offset on the
//! volume is `(agno * agblocks + agbno) * blocksize`. An inode number is
//! `agno << (agblklog + inopblog) | agbno << inopblog | index in block`.

use super::be::{guest, unsupported, Be};
use crate::Result;

pub(super) const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"

// sb_versionnum bits (v4 feature flags; v5 keeps some of them set too).
const VERSION_NUMBITS: u16 = 0x000f;
const VERSION_DIRV2BIT: u16 = 0x2000;
const VERSION_BORGBIT: u16 = 0x4000; // ASCII case-insensitive names
const VERSION_MOREBITSBIT: u16 = 0x8000;
// sb_features2 bits.
const FEATURES2_CRC: u32 = 0x0100;
const FEATURES2_FTYPE: u32 = 0x0200;
// v5 sb_features_ro_compat bits.
const RO_COMPAT_FINOBT: u32 = 0x1;
const RO_COMPAT_RMAPBT: u32 = 0x2;
const RO_COMPAT_REFLINK: u32 = 0x4;
const RO_COMPAT_INOBTCNT: u32 = 0x8;
// v5 sb_features_incompat bits.
const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_SPINODES: u32 = 0x2;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_BIGTIME: u32 = 0x8;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
const INCOMPAT_NREXT64: u32 = 0x20;
const INCOMPAT_EXCHRANGE: u32 = 0x40;
const INCOMPAT_PARENT: u32 = 0x80;
const INCOMPAT_METADIR: u32 = 0x100;
const INCOMPAT_ZONED: u32 = 0x200;
/// Incompat features that change nothing this reader looks at: file types in directory
/// entries and the inode and timestamp formats are handled; "needs repair" is a warning;
/// exchange-range only adds log items; parent pointers live in extended attributes.
const INCOMPAT_READABLE: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NEEDSREPAIR
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;

/// Feature switches the reader consults (or reports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Version 5: CRCs, self-describing metadata headers (owner, uuid), v3 inodes.
    pub crc: bool,
    /// Directory entries carry the file type.
    pub ftype: bool,
    pub finobt: bool,
    pub sparse_inodes: bool,
    /// Inodes may carry 64-bit nanosecond timestamps (per inode, `XFS_DIFLAG2_BIGTIME`).
    pub bigtime: bool,
    /// Inodes may carry 64-bit extent counts (per inode, `XFS_DIFLAG2_NREXT64`).
    pub nrext64: bool,
    /// Metadata blocks are stamped with `sb_meta_uuid` instead of `sb_uuid`.
    pub meta_uuid: bool,
    pub reflink: bool,
    pub rmapbt: bool,
    pub inobtcount: bool,
    /// `xfs_repair` must run before the kernel mounts it.
    pub needsrepair: bool,
    /// Names hash (and match, in the kernel) ASCII case-insensitively.
    pub ascii_ci: bool,
}

/// The geometry and features of one XFS filesystem.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub blocksize: u32,
    pub blocklog: u8,
    pub sectsize: u16,
    /// Blocks of the data device.
    pub dblocks: u64,
    pub rblocks: u64,
    pub rextents: u64,
    pub agblocks: u32,
    pub agblklog: u8,
    pub agcount: u32,
    pub inodesize: u16,
    pub inodelog: u8,
    pub inopblock: u16,
    pub inopblog: u8,
    /// Directory blocks are `blocksize << dirblklog` bytes.
    pub dirblklog: u8,
    pub rootino: u64,
    /// First block of the internal log (0: the log is on an external device).
    pub logstart: u64,
    pub logblocks: u32,
    /// 4 or 5.
    pub version: u8,
    pub features: Features,
    /// `sb_features_ro_compat` bits this reader does not know (harmless to a reader).
    pub unknown_ro_compat: u32,
    pub uuid: [u8; 16],
    pub meta_uuid: [u8; 16],
    /// `sb_fname`, up to 12 bytes, NUL-padded.
    pub label: Vec<u8>,
}

fn log2_exact(v: u64) -> Option<u8> {
    (v != 0 && v.is_power_of_two()).then(|| v.trailing_zeros() as u8)
}

impl Superblock {
    /// Parses and checks the primary superblock (the first 512 bytes of the volume).
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        let r = Be::new(b, "XFS superblock");
        if r.u32(0)? != SB_MAGIC {
            return Err(guest("superblock: no XFSB magic"));
        }
        let blocksize = r.u32(4)?;
        let dblocks = r.u64(8)?;
        let rblocks = r.u64(16)?;
        let rextents = r.u64(24)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(r.bytes(32, 16)?);
        let logstart = r.u64(48)?;
        let rootino = r.u64(56)?;
        let agblocks = r.u32(84)?;
        let agcount = r.u32(88)?;
        let logblocks = r.u32(96)?;
        let versionnum = r.u16(100)?;
        let sectsize = r.u16(102)?;
        let inodesize = r.u16(104)?;
        let inopblock = r.u16(106)?;
        let fname = r.bytes(108, 12)?;
        let label = fname[..fname.iter().position(|&c| c == 0).unwrap_or(12)].to_vec();
        let blocklog = r.u8(120)?;
        let sectlog = r.u8(121)?;
        let inodelog = r.u8(122)?;
        let inopblog = r.u8(123)?;
        let agblklog = r.u8(124)?;
        let dirblklog = r.u8(192)?;
        let features2 = r.u32(200)?;

        let version = (versionnum & VERSION_NUMBITS) as u8;
        let mut f = Features::default();
        let mut unknown_ro_compat = 0;
        let mut meta_uuid = uuid;
        match version {
            5 => {
                let ro_compat = r.u32(212)?;
                let incompat = r.u32(216)?;
                let unknown = incompat & !INCOMPAT_READABLE;
                if unknown & INCOMPAT_METADIR != 0 {
                    return Err(unsupported("the metadata directory tree (metadir feature)"));
                }
                if unknown & INCOMPAT_ZONED != 0 {
                    return Err(unsupported("a zoned realtime device (zoned feature)"));
                }
                if unknown != 0 {
                    return Err(unsupported(format!(
                        "incompatible feature bits {unknown:#x} (newer than this reader)"
                    )));
                }
                f.crc = true;
                f.ftype = incompat & INCOMPAT_FTYPE != 0;
                f.sparse_inodes = incompat & INCOMPAT_SPINODES != 0;
                f.meta_uuid = incompat & INCOMPAT_META_UUID != 0;
                f.bigtime = incompat & INCOMPAT_BIGTIME != 0;
                f.needsrepair = incompat & INCOMPAT_NEEDSREPAIR != 0;
                f.nrext64 = incompat & INCOMPAT_NREXT64 != 0;
                f.finobt = ro_compat & RO_COMPAT_FINOBT != 0;
                f.rmapbt = ro_compat & RO_COMPAT_RMAPBT != 0;
                f.reflink = ro_compat & RO_COMPAT_REFLINK != 0;
                f.inobtcount = ro_compat & RO_COMPAT_INOBTCNT != 0;
                unknown_ro_compat = ro_compat
                    & !(RO_COMPAT_FINOBT
                        | RO_COMPAT_RMAPBT
                        | RO_COMPAT_REFLINK
                        | RO_COMPAT_INOBTCNT);
                if f.meta_uuid {
                    meta_uuid.copy_from_slice(r.bytes(248, 16)?);
                }
            }
            4 => {
                if versionnum & VERSION_DIRV2BIT == 0 {
                    return Err(unsupported("version 1 directories (pre-2002 XFS)"));
                }
                let more = versionnum & VERSION_MOREBITSBIT != 0;
                if more && features2 & FEATURES2_CRC != 0 {
                    return Err(guest("superblock: version 4 with the CRC feature bit"));
                }
                f.ftype = more && features2 & FEATURES2_FTYPE != 0;
            }
            1..=3 => {
                return Err(unsupported(format!(
                    "superblock version {version} (pre-2002 XFS)"
                )))
            }
            _ => return Err(guest(format!("superblock: unknown version {version}"))),
        }

        f.ascii_ci = versionnum & VERSION_BORGBIT != 0;
        let bad = |what: &str| Err(guest(format!("superblock: {what}")));
        if !(512..=65536).contains(&blocksize) || log2_exact(blocksize as u64) != Some(blocklog) {
            return bad(&format!("block size {blocksize} (log {blocklog})"));
        }
        if !(512..=32768).contains(&sectsize)
            || log2_exact(sectsize as u64) != Some(sectlog)
            || sectsize as u32 > blocksize
        {
            return bad(&format!("sector size {sectsize} (log {sectlog})"));
        }
        if !(256..=2048).contains(&inodesize)
            || log2_exact(inodesize as u64) != Some(inodelog)
            || inodesize as u32 > blocksize
            || (f.crc && inodesize < 512)
        {
            return bad(&format!("inode size {inodesize} (log {inodelog})"));
        }
        if inopblock as u32 != blocksize >> inodelog
            || log2_exact(inopblock as u64) != Some(inopblog)
        {
            return bad(&format!("{inopblock} inodes per block (log {inopblog})"));
        }
        // agblklog is the rounded-up log2 of agblocks.
        // XFS_MIN_AG_BLOCKS is 64.
        if agblocks < 64
            || agblklog > 31
            || (agblocks as u64) > 1u64 << agblklog
            || (agblocks as u64) <= 1u64 << agblklog >> 1
        {
            return bad(&format!("{agblocks} blocks per AG (log {agblklog})"));
        }
        let max_blocks = (agcount as u64).saturating_mul(agblocks as u64);
        if agcount == 0
            || dblocks > max_blocks
            || dblocks <= max_blocks - agblocks as u64
            || dblocks
                .checked_mul(blocksize as u64)
                .is_none_or(|b| b > 1 << 62)
        {
            return bad(&format!(
                "{dblocks} blocks in {agcount} AGs of {agblocks} blocks"
            ));
        }
        if dirblklog > 16 || (blocksize as u64) << dirblklog > 65536 {
            return bad(&format!("directory block log {dirblklog}"));
        }
        let sb = Superblock {
            blocksize,
            blocklog,
            sectsize,
            dblocks,
            rblocks,
            rextents,
            agblocks,
            agblklog,
            agcount,
            inodesize,
            inodelog,
            inopblock,
            inopblog,
            dirblklog,
            rootino,
            logstart,
            logblocks,
            version,
            features: f,
            unknown_ro_compat,
            uuid,
            meta_uuid,
            label,
        };
        sb.inode_offset(rootino)
            .map_err(|e| guest(format!("superblock: root inode: {e}")))?;
        if logstart != 0 {
            sb.extent_offset(logstart, logblocks as u64)
                .map_err(|e| guest(format!("superblock: internal log: {e}")))?;
        }
        Ok(sb)
    }

    /// Bytes of one directory block.
    pub fn dirblksize(&self) -> usize {
        (self.blocksize as usize) << self.dirblklog
    }

    /// The volume byte offset of inode `ino`, after checking each part of the number.
    pub fn inode_offset(&self, ino: u64) -> Result<u64> {
        let agino_bits = self.agblklog as u32 + self.inopblog as u32;
        let agno = ino.checked_shr(agino_bits).unwrap_or(0);
        let agbno = (ino >> self.inopblog) & ((1u64 << self.agblklog) - 1);
        let index = ino & ((1u64 << self.inopblog) - 1);
        if ino == 0 || agno >= self.agcount as u64 || agbno >= self.agblocks as u64 {
            return Err(guest(format!(
                "inode number {ino} (AG {agno}, block {agbno}) lies outside the filesystem"
            )));
        }
        let block = agno * self.agblocks as u64 + agbno;
        if block >= self.dblocks {
            return Err(guest(format!(
                "inode number {ino} lies past the last block"
            )));
        }
        Ok((block << self.blocklog) + (index << self.inodelog))
    }

    /// The volume byte offset of `len` blocks starting at filesystem block `fsb`, which
    /// must lie inside one AG (extents never cross AGs) and inside the data device.
    pub fn extent_offset(&self, fsb: u64, len: u64) -> Result<u64> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        let end = agbno.checked_add(len);
        if agno >= self.agcount as u64 || end.is_none_or(|e| e > self.agblocks as u64) {
            return Err(guest(format!(
                "blocks {agno}/{agbno}+{len} lie outside their allocation group"
            )));
        }
        let block = agno * self.agblocks as u64 + agbno;
        if block + len > self.dblocks {
            return Err(guest(format!(
                "blocks {agno}/{agbno}+{len} lie past the end of the filesystem"
            )));
        }
        Ok(block << self.blocklog)
    }

    /// The volume byte offset of block `agbno` of AG `agno` (AG headers, short btree
    /// pointers).
    pub fn ag_offset(&self, agno: u32, agbno: u64) -> Result<u64> {
        if agbno >= self.agblocks as u64 {
            return Err(guest(format!(
                "block {agno}/{agbno} lies outside its allocation group"
            )));
        }
        self.extent_offset(((agno as u64) << self.agblklog) | agbno, 1)
    }

    /// Blocks in AG `agno` (the last one may be shorter).
    pub fn ag_len(&self, agno: u32) -> u64 {
        let start = agno as u64 * self.agblocks as u64;
        self.dblocks.saturating_sub(start).min(self.agblocks as u64)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A superblock with the geometry of a small default v5 mkfs.
    pub fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        let put16 =
            |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 0, SB_MAGIC);
        put32(&mut b, 4, 4096);
        put64(&mut b, 8, 16384);
        put64(&mut b, 56, 128);
        put32(&mut b, 84, 4096);
        put32(&mut b, 88, 4);
        put16(&mut b, 100, 0xb4a5);
        put16(&mut b, 102, 512);
        put16(&mut b, 104, 512);
        put16(&mut b, 106, 8);
        b[120] = 12;
        b[121] = 9;
        b[122] = 9;
        b[123] = 3;
        b[124] = 12;
        put32(&mut b, 216, INCOMPAT_FTYPE | INCOMPAT_BIGTIME);
        b
    }

    #[test]
    fn geometry_and_addresses() {
        let sb = Superblock::parse(&sample()).unwrap();
        assert_eq!(sb.version, 5);
        assert!(sb.features.ftype && sb.features.bigtime && !sb.features.nrext64);
        assert_eq!(sb.inode_offset(128).unwrap(), 16 * 4096);
        // AG 1, block 2, index 3.
        let ino = (1u64 << 15) | (2 << 3) | 3;
        assert_eq!(sb.inode_offset(ino).unwrap(), (4096 + 2) * 4096 + 3 * 512);
        assert!(sb.inode_offset(4u64 << 15).is_err());
        assert!(sb.inode_offset(0).is_err());
        assert_eq!(
            sb.extent_offset((3 << 12) | 5, 10).unwrap(),
            (3 * 4096 + 5) * 4096
        );
        assert!(sb.extent_offset((3 << 12) | 4090, 10).is_err());
        assert!(sb.extent_offset(u64::MAX, 1).is_err());
    }

    #[test]
    fn refuses_unknown_features_by_name() {
        let mut b = sample();
        b[216..220].copy_from_slice(&(INCOMPAT_FTYPE | 0x8000_0000u32).to_be_bytes());
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("0x80000000"), "{e}");
        b[216..220].copy_from_slice(&INCOMPAT_METADIR.to_be_bytes());
        let e = Superblock::parse(&b).unwrap_err().to_string();
        assert!(e.contains("metadir"), "{e}");
        let mut b = sample();
        b[4] = 0x11;
        assert!(Superblock::parse(&b).is_err());
    }
}
