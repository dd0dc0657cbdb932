//! Extended attributes, read only as far as inline data needs them: the `system.data`
//! attribute holds the part of an inline file or directory that does not fit `i_block`.
//!
//! Attributes live in the inode after its extra fields (a 4-byte magic, then entries whose
//! value offsets count from the first entry) or in one xattr block named by `i_file_acl`
//! (a 32-byte header, then entries whose value offsets count from the block start). Each
//! entry is 16 bytes plus the name, padded to 4; a zero word ends the list.

use super::inode::Inode;
use super::Ext4;
use crate::fs::{read_vec, Le};
use crate::{Error, Result};

const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Name index of the "system." prefix.
pub const INDEX_SYSTEM: u8 = 7;

/// The value of attribute (`index`, `name`) of `inode`, if it has one.
pub fn find(fs: &Ext4, inode: &Inode, index: u8, name: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(start) = inode.xattr_start {
        let area = inode.raw.get(start..).unwrap_or(&[]);
        let le = Le::new(area, "ext4: in-inode xattrs");
        if le.u32(0).ok() == Some(XATTR_MAGIC) {
            let what = format!("ext4: inode {}: in-inode xattrs", inode.ino);
            let entries = area.get(4..).unwrap_or(&[]);
            if let Some(v) = search(entries, 0, entries, index, name, &what)? {
                return Ok(Some(v));
            }
        }
    }
    if inode.file_acl != 0 {
        let sb = &fs.sb;
        if inode.file_acl >= sb.blocks_count {
            return Err(Error::Guest(format!(
                "ext4: inode {}: xattr block {} lies past the end of the filesystem",
                inode.ino, inode.file_acl
            )));
        }
        let what = format!("ext4: inode {}: xattr block {}", inode.ino, inode.file_acl);
        let block = read_vec(
            fs.dev.as_ref(),
            inode.file_acl * sb.block_size,
            sb.block_size,
            1 << 16,
            &what,
        )?;
        let le = Le::new(&block, &what);
        if le.u32(0)? != XATTR_MAGIC {
            return Err(Error::Guest(format!("{what}: bad magic")));
        }
        return search(&block, 32, &block, index, name, &what);
    }
    Ok(None)
}

/// Walks the entries in `area` from `at`; values are at offsets into `values`.
fn search(
    area: &[u8],
    mut at: usize,
    values: &[u8],
    index: u8,
    name: &[u8],
    what: &str,
) -> Result<Option<Vec<u8>>> {
    let le = Le::new(area, what);
    // Each entry takes at least 16 bytes, so this ends within area.len() / 16 steps.
    while at + 4 <= area.len() && le.u32(at)? != 0 {
        let name_len = usize::from(le.u8(at)?);
        let e_index = le.u8(at + 1)?;
        let value_offs = usize::from(le.u16(at + 2)?);
        let value_inum = le.u32(at + 4)?;
        let value_size = le.u32(at + 8)? as usize;
        let e_name = le.bytes(at + 16, name_len)?;
        if e_index == index && e_name == name {
            if value_inum != 0 {
                return Err(Error::Unsupported(format!(
                    "{what}: a value kept in its own inode (ea_inode) for an inline-data \
                     attribute is not supported"
                )));
            }
            let v = value_offs
                .checked_add(value_size)
                .and_then(|end| values.get(value_offs..end))
                .ok_or_else(|| {
                    Error::Guest(format!(
                        "{what}: value of {value_size} bytes at {value_offs} lies outside the area"
                    ))
                })?;
            return Ok(Some(v.to_vec()));
        }
        at += (16 + name_len).next_multiple_of(4);
    }
    Ok(None)
}
