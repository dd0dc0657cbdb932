//! Names in FAT directories: 8.3 short names in the OEM code page, with the case bits
//! Windows NT added, and the VFAT long names (UTF-16) stored in entries before them.

/// Code page 437 (the IBM PC set, DOS's and Linux's default) for bytes 0x80..=0xFF; below
/// 0x80 it is ASCII. Short names and labels are decoded with it: FAT does not record
/// which OEM code page wrote them, and 437 is what Linux assumes unless told otherwise.
const CP437_HIGH: [char; 128] = [
    '\u{00c7}', '\u{00fc}', '\u{00e9}', '\u{00e2}', '\u{00e4}', '\u{00e0}', '\u{00e5}', '\u{00e7}',
    '\u{00ea}', '\u{00eb}', '\u{00e8}', '\u{00ef}', '\u{00ee}', '\u{00ec}', '\u{00c4}', '\u{00c5}',
    '\u{00c9}', '\u{00e6}', '\u{00c6}', '\u{00f4}', '\u{00f6}', '\u{00f2}', '\u{00fb}', '\u{00f9}',
    '\u{00ff}', '\u{00d6}', '\u{00dc}', '\u{00a2}', '\u{00a3}', '\u{00a5}', '\u{20a7}', '\u{0192}',
    '\u{00e1}', '\u{00ed}', '\u{00f3}', '\u{00fa}', '\u{00f1}', '\u{00d1}', '\u{00aa}', '\u{00ba}',
    '\u{00bf}', '\u{2310}', '\u{00ac}', '\u{00bd}', '\u{00bc}', '\u{00a1}', '\u{00ab}', '\u{00bb}',
    '\u{2591}', '\u{2592}', '\u{2593}', '\u{2502}', '\u{2524}', '\u{2561}', '\u{2562}', '\u{2556}',
    '\u{2555}', '\u{2563}', '\u{2551}', '\u{2557}', '\u{255d}', '\u{255c}', '\u{255b}', '\u{2510}',
    '\u{2514}', '\u{2534}', '\u{252c}', '\u{251c}', '\u{2500}', '\u{253c}', '\u{255e}', '\u{255f}',
    '\u{255a}', '\u{2554}', '\u{2569}', '\u{2566}', '\u{2560}', '\u{2550}', '\u{256c}', '\u{2567}',
    '\u{2568}', '\u{2564}', '\u{2565}', '\u{2559}', '\u{2558}', '\u{2552}', '\u{2553}', '\u{256b}',
    '\u{256a}', '\u{2518}', '\u{250c}', '\u{2588}', '\u{2584}', '\u{258c}', '\u{2590}', '\u{2580}',
    '\u{03b1}', '\u{00df}', '\u{0393}', '\u{03c0}', '\u{03a3}', '\u{03c3}', '\u{00b5}', '\u{03c4}',
    '\u{03a6}', '\u{0398}', '\u{03a9}', '\u{03b4}', '\u{221e}', '\u{03c6}', '\u{03b5}', '\u{2229}',
    '\u{2261}', '\u{00b1}', '\u{2265}', '\u{2264}', '\u{2320}', '\u{2321}', '\u{00f7}', '\u{2248}',
    '\u{00b0}', '\u{2219}', '\u{00b7}', '\u{221a}', '\u{207f}', '\u{00b2}', '\u{25a0}', '\u{00a0}',
];

/// Decodes OEM bytes (code page 437) to a string.
pub fn cp437(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| match b {
            0..=0x7F => char::from(b),
            _ => CP437_HIGH
                .get(usize::from(b - 0x80))
                .copied()
                .unwrap_or('?'),
        })
        .collect()
}

/// The name a short (8.3) entry shows: base and extension with their padding spaces
/// removed, joined by a dot when there is an extension, each lower-cased if its Windows NT
/// case bit is set (`case` is byte 12: 0x08 base, 0x10 extension). A leading 0x05 stands
/// for 0xE5 (a Kanji lead byte that would otherwise read as "deleted"). None for an
/// unusable name: an empty base, or "." and "..". Slashes and NULs, which no FAT name may
/// hold, become '_' so a hostile name cannot reach outside its directory.
pub fn short_name(raw: &[u8], case: u8) -> Option<String> {
    let mut base: Vec<u8> = raw.get(..8)?.to_vec();
    let mut ext: Vec<u8> = raw.get(8..11)?.to_vec();
    if let Some(b) = base.first_mut().filter(|b| **b == 0x05) {
        *b = 0xE5;
    }
    trim_spaces(&mut base);
    trim_spaces(&mut ext);
    if base.is_empty() {
        return None;
    }
    if case & 0x08 != 0 {
        base.make_ascii_lowercase();
    }
    if case & 0x10 != 0 {
        ext.make_ascii_lowercase();
    }
    let mut name = cp437(&base);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&cp437(&ext));
    }
    if name == "." || name == ".." {
        return None;
    }
    Some(name.replace(['/', '\0'], "_"))
}

fn trim_spaces(v: &mut Vec<u8>) {
    while v.last() == Some(&b' ') {
        v.pop();
    }
}

/// The checksum of an 11-byte short name that each of its long-name entries repeats: a
/// byte-wise rotate-right-and-add.
pub fn checksum(raw: &[u8]) -> u8 {
    raw.iter()
        .take(11)
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Most long-name entries a name may use: 20 × 13 UTF-16 units hold the 255-unit maximum.
const MAX_LFN_ENTRIES: u8 = 20;
/// Where an entry's 13 UTF-16 units lie: bytes 1..11, 14..26 and 28..32.
const UNIT_AT: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Collects the long-name entries before a short entry. They are stored last part first:
/// the entry with bit 0x40 in its ordinal byte carries the highest sequence number N, then
/// N-1 down to 1, each repeating the short name's checksum. Anything out of order, a
/// checksum that changes, or a sequence that does not end right before its short entry
/// leaves an orphan, which is dropped (the short name is used), as Windows and Linux do.
#[derive(Default)]
pub struct LongName {
    units: Vec<u16>,
    /// The sequence number the next entry must carry; 0 once complete.
    expect: u8,
    sum: u8,
    active: bool,
}

impl LongName {
    pub fn reset(&mut self) {
        self.active = false;
        self.units.clear();
    }

    /// Takes one 32-byte long-name entry.
    pub fn push(&mut self, e: &[u8]) {
        let (Some(&ord), Some(&kind), Some(&sum)) = (e.first(), e.get(12), e.get(13)) else {
            return self.reset();
        };
        let seq = ord & 0x1F;
        // Type 0 is a name part; other types are reserved.
        if kind != 0 || seq == 0 || seq > MAX_LFN_ENTRIES {
            return self.reset();
        }
        if ord & 0x40 != 0 {
            self.units.clear();
            self.units.resize(usize::from(seq) * 13, 0xFFFF);
            self.sum = sum;
            self.active = true;
        } else if !self.active || seq != self.expect || sum != self.sum {
            return self.reset();
        }
        let base = usize::from(seq - 1) * 13;
        for (i, at) in UNIT_AT.iter().enumerate() {
            let (Some(&lo), Some(&hi)) = (e.get(*at), e.get(at + 1)) else {
                return self.reset();
            };
            if let Some(u) = self.units.get_mut(base + i) {
                *u = u16::from_le_bytes([lo, hi]);
            }
        }
        self.expect = seq - 1;
    }

    /// The long name belonging to the short entry whose 11-byte name is `short`, if a
    /// complete sequence with its checksum came right before it; resets either way. Names
    /// end at a 0x0000 unit; unpaired surrogates become U+FFFD. Empty names, "." and "..",
    /// and names with a slash are refused (the short name is used instead).
    pub fn take(&mut self, short: &[u8]) -> Option<String> {
        let done = self.active && self.expect == 0 && checksum(short) == self.sum;
        let name = done.then(|| {
            let end = self
                .units
                .iter()
                .position(|&u| u == 0)
                .unwrap_or(self.units.len());
            String::from_utf16_lossy(self.units.get(..end).unwrap_or(&[]))
        });
        self.reset();
        name.filter(|n| !n.is_empty() && n != "." && n != ".." && !n.contains('/'))
    }
}

/// A name folded for FAT's case-insensitive comparison: each character replaced by its
/// upper case when that is a single character (the one-to-one mapping of Windows' upcase
/// table; "ß" stays "ß"). None if `name` is not UTF-8, which no listed name is.
pub fn fold(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    Some(
        s.chars()
            .map(|c| {
                let mut up = c.to_uppercase();
                match (up.next(), up.next()) {
                    (Some(u), None) => u,
                    _ => c,
                }
            })
            .collect(),
    )
}
