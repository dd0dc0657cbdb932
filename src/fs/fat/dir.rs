//! Directory entries: 32 bytes each, a short (8.3) entry per file or directory, preceded
//! by the long-name entries VFAT adds, in a directory that ends at the first entry whose
//! first byte is 0x00.

use super::names::{self, LongName};
use crate::fs::{Le, Time};

/// Attribute bits (byte 11).
pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Read-only + hidden + system + volume id: how a long-name entry marks itself.
const ATTR_LONG_NAME: u8 = 0x0F;

/// First byte of an entry: the end of the directory, or a deleted entry.
const END: u8 = 0x00;
const DELETED: u8 = 0xE5;

/// The fields of a short entry a reader needs.
#[derive(Clone, Copy, Debug)]
pub struct Info {
    pub attr: u8,
    pub first_cluster: u32,
    pub size: u32,
    pub mtime: Time,
    pub atime: Time,
    pub ctime: Time,
}

impl Info {
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// One listed entry of a directory.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Volume byte offset of its short entry: its inode number.
    pub offset: u64,
    /// The long name if it has a valid one, else the short name.
    pub name: String,
    /// The short name as listings show it (case bits applied), for lookups.
    pub short: String,
    pub info: Info,
}

/// A directory read and parsed.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// The root directory's volume-label entry, if it has one.
    pub label: Option<String>,
}

/// What a 32-byte short entry is, seen on its own (as `stat` sees it from an inode number).
pub enum Kind {
    End,
    /// Deleted, a dot entry, or a name no listing shows.
    Skip,
    LongName,
    Label,
    Entry(String),
}

pub fn kind(raw: &[u8]) -> Kind {
    let (Some(&first), Some(&attr), Some(&case), Some(name)) =
        (raw.first(), raw.get(11), raw.get(12), raw.get(..11))
    else {
        return Kind::Skip;
    };
    match first {
        END => return Kind::End,
        DELETED => return Kind::Skip,
        _ => {}
    }
    if attr & 0x3F == ATTR_LONG_NAME {
        return Kind::LongName;
    }
    if attr & (ATTR_VOLUME_ID | ATTR_DIRECTORY) == ATTR_VOLUME_ID {
        return Kind::Label;
    }
    if attr & ATTR_VOLUME_ID != 0 || name == b".          " || name == b"..         " {
        return Kind::Skip;
    }
    match names::short_name(name, case) {
        Some(n) => Kind::Entry(n),
        None => Kind::Skip,
    }
}

/// The fields of short entry `raw` (32 bytes). `fat32`: the high 16 bits of the first
/// cluster count (FAT12/16 keep other things there).
pub fn info(raw: &[u8], fat32: bool) -> Info {
    let le = Le::new(raw, "FAT directory entry");
    let u16_at = |at| le.u16(at).unwrap_or(0);
    let hi = if fat32 { u32::from(u16_at(20)) } else { 0 };
    Info {
        attr: le.u8(11).unwrap_or(0),
        first_cluster: hi << 16 | u32::from(u16_at(26)),
        size: le.u32(28).unwrap_or(0),
        mtime: time(u16_at(24), u16_at(22), 0),
        atime: time(u16_at(18), 0, 0),
        ctime: time(u16_at(16), u16_at(14), le.u8(13).unwrap_or(0)),
    }
}

/// Parses a directory's bytes. `at` turns a position in `buf` into its volume offset;
/// `root` says whether a volume-label entry counts.
pub fn parse(buf: &[u8], at: impl Fn(usize) -> u64, fat32: bool, root: bool) -> Listing {
    let mut out = Listing::default();
    let mut lfn = LongName::default();
    for (i, raw) in buf.chunks_exact(32).enumerate() {
        match kind(raw) {
            Kind::End => break,
            Kind::Skip => lfn.reset(),
            Kind::LongName => lfn.push(raw),
            Kind::Label => {
                lfn.reset();
                if root && out.label.is_none() {
                    let s = names::cp437(raw.get(..11).unwrap_or(&[]));
                    let s = s.trim_end_matches(' ');
                    if !s.is_empty() {
                        out.label = Some(s.to_string());
                    }
                }
            }
            Kind::Entry(short) => {
                let long = lfn.take(raw.get(..11).unwrap_or(&[]));
                out.entries.push(Entry {
                    offset: at(i * 32),
                    name: long.unwrap_or_else(|| short.clone()),
                    short,
                    info: info(raw, fat32),
                });
            }
        }
    }
    out
}

/// A FAT date and time as seconds since the Unix epoch. FAT stores local time without a
/// zone; this reader takes it as UTC. Date: day (bits 0-4), month (5-8), year since 1980
/// (9-15); time: seconds/2 (0-4), minutes (5-10), hours (11-15); `centis` adds 0-199
/// hundredths (creation time only). A day or month of 0 reads as 1, a month over 12 as 12,
/// as Linux reads them; other out-of-range fields are simply added up.
pub fn time(date: u16, time: u16, centis: u8) -> Time {
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0x0F).clamp(1, 12);
    let day = i64::from(date & 0x1F).max(1);
    let secs = i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2;
    let centis = u32::from(centis.min(199));
    Time {
        sec: days_from_civil(year, month, day) * 86400 + secs + i64::from(centis / 100),
        nsec: (centis % 100) * 10_000_000,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
