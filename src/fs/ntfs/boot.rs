//! The NTFS boot sector: the volume's geometry (sector, cluster, MFT record and index block
//! sizes) and where the MFT starts.
//!
//! Two size fields use compact encodings: `sectors_per_cluster` above 128 means a power of
//! two (`2^(256 - v)` sectors, for clusters of 64 KiB and more), and the signed
//! `clusters_per_mft_record` / `clusters_per_index_block` mean a count of clusters when
//! positive and `2^-v` bytes when negative (records smaller than a cluster).

use crate::fs::Le;
use crate::{Error, Result};

/// The OEM id at byte 3 that names an NTFS volume.
pub const OEM_ID: &[u8; 8] = b"NTFS    ";

/// Largest cluster NTFS allows (Windows 10 formats up to 2 MiB).
const MAX_CLUSTER: u64 = 2 << 20;

/// The geometry read from the boot sector, checked for sanity.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub cluster_size: u64,
    /// Clusters in the volume (from the sector count).
    pub total_clusters: u64,
    pub mft_lcn: u64,
    pub record_size: u32,
}

/// A size from a signed `clusters_per_*` byte: clusters when positive, `2^-v` bytes when
/// negative.
fn signed_size(v: u8, cluster: u64, what: &str) -> Result<u32> {
    let v = v as i8;
    let size = if v > 0 {
        (v as u64).saturating_mul(cluster)
    } else if (-31..0).contains(&v) {
        1u64 << (-(v as i32))
    } else {
        return Err(Error::Guest(format!(
            "NTFS boot sector: {what} field {v} is not a valid size"
        )));
    };
    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
        return Err(Error::Guest(format!(
            "NTFS boot sector: {what} of {size} bytes (512..64 KiB, a power of two, expected)"
        )));
    }
    Ok(size as u32)
}

impl Geometry {
    /// Parses the first sector of the volume; `dev_size` bounds the MFT's position.
    pub fn parse(b: &[u8], dev_size: u64) -> Result<Geometry> {
        let le = Le::new(b, "NTFS boot sector");
        if le.bytes(3, 8)? != OEM_ID {
            return Err(Error::Guest(
                "NTFS boot sector: the OEM id is not \"NTFS    \"".into(),
            ));
        }
        if le.u16(510)? != 0xAA55 {
            return Err(Error::Guest(
                "NTFS boot sector: the 0x55AA signature is missing".into(),
            ));
        }
        let sector_size = le.u16(0x0B)? as u32;
        if !(256..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
            return Err(Error::Guest(format!(
                "NTFS boot sector: {sector_size} bytes per sector (256..4096, a power of two)"
            )));
        }
        let spc = le.u8(0x0D)?;
        let sectors_per_cluster: u64 = match spc {
            0 => {
                return Err(Error::Guest(
                    "NTFS boot sector: 0 sectors per cluster".into(),
                ))
            }
            1..=128 if spc.is_power_of_two() => spc as u64,
            // 0xF4 = -12: 4096 sectors. Shifts past 2 MiB clusters are caught below.
            129..=255 if 256 - (spc as u32) < 32 => 1u64 << (256 - spc as u32),
            _ => {
                return Err(Error::Guest(format!(
                    "NTFS boot sector: sectors per cluster field {spc} is not a power of two"
                )))
            }
        };
        let cluster_size = sectors_per_cluster.saturating_mul(sector_size as u64);
        if cluster_size > MAX_CLUSTER {
            return Err(Error::Guest(format!(
                "NTFS boot sector: clusters of {cluster_size} bytes (at most 2 MiB)"
            )));
        }
        let total_sectors = le.u64(0x28)?;
        let total_clusters = total_sectors / sectors_per_cluster;
        let mft_lcn = le.u64(0x30)?;
        let record_size = signed_size(le.u8(0x40)?, cluster_size, "MFT record size")?;
        signed_size(le.u8(0x44)?, cluster_size, "index block size")?;
        if mft_lcn
            .checked_mul(cluster_size)
            .and_then(|o| o.checked_add(record_size as u64))
            .is_none_or(|end| end > dev_size)
        {
            return Err(Error::Guest(format!(
                "NTFS boot sector: the MFT at cluster {mft_lcn} lies outside the volume \
                 ({dev_size} bytes)"
            )));
        }
        Ok(Geometry {
            cluster_size,
            total_clusters,
            mft_lcn,
            record_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(spc: u8, rec: u8) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[3..11].copy_from_slice(OEM_ID);
        b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        b[0x0D] = spc;
        b[0x28..0x30].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        b[0x40] = rec;
        b[0x44] = 1;
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn encodings() {
        let g = Geometry::parse(&boot(8, 0xF6), 1 << 30).unwrap();
        assert_eq!((g.cluster_size, g.record_size), (4096, 1024));
        // 0xF7 = -9: 512 sectors of 512 bytes = 256 KiB clusters; 2 clusters per record
        // would be 512 KiB records, refused.
        assert!(Geometry::parse(&boot(0xF7, 2), 1 << 40).is_err());
        let mut b = boot(0xF7, 0xF6);
        b[0x44] = 0xF4;
        let g = Geometry::parse(&b, 1 << 40).unwrap();
        assert_eq!(g.cluster_size, 256 << 10);
        assert!(Geometry::parse(&boot(3, 0xF6), 1 << 30).is_err());
        assert!(Geometry::parse(&boot(0xE0, 0xF6), 1 << 30).is_err());
        assert!(Geometry::parse(&boot(8, 0x80), 1 << 30).is_err());
        // The MFT must lie inside the device.
        assert!(Geometry::parse(&boot(8, 0xF6), 4096).is_err());
    }
}
