//! Whether the internal log was cleanly unmounted, without replaying it.
//!
//! The log is a ring of 512-byte basic blocks. Every block written in the n-th pass round
//! the ring starts with the pass number ("cycle"), except a record header, which starts
//! with `XLOG_HEADER_MAGIC` (0xFEEDBABE) and carries the cycle in its next word. So the
//! ring reads as cycle c up to the head and c-1 after it; the head is found the way the
//! kernel finds it, by binary search for the first block whose cycle differs from the
//! first block's (or the end of the ring, if it is all one cycle). The last record before
//! the head is then read: the log is clean when it holds a single operation flagged
//! `XLOG_UNMOUNT_TRANS`, the record a clean unmount (or mkfs) writes.
//!
//! Not handled: the torn writes the kernel looks for near the head after a crash (they
//! only occur in a dirty log, which the answer already says) and external log devices
//! (reported as unknown).

use super::be::Be;
use super::sb::Superblock;
use crate::blockdev::BlockRead;

const HEADER_MAGIC: u32 = 0xfeed_babe;
const UNMOUNT_TRANS: u8 = 0x20;
const BB: u64 = 512;
/// How far before the head the last record header is looked for: a record is at most
/// 256 KiB of data plus 8 header blocks.
const SEARCH_BBS: u64 = 1024;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum LogState {
    Clean,
    Dirty,
    /// Could not tell, and why.
    Unknown(String),
}

struct Ring<'a> {
    dev: &'a dyn BlockRead,
    start: u64,
    bbs: u64,
}

impl Ring<'_> {
    fn block(&self, bb: u64) -> Option<[u8; BB as usize]> {
        let mut b = [0u8; BB as usize];
        self.dev
            .read_at(self.start + (bb % self.bbs) * BB, &mut b)
            .ok()?;
        Some(b)
    }

    fn cycle(&self, bb: u64) -> Option<u32> {
        let b = self.block(bb)?;
        let r = Be::new(&b, "XFS log block");
        let first = r.u32(0).ok()?;
        if first == HEADER_MAGIC {
            r.u32(4).ok()
        } else {
            Some(first)
        }
    }
}

pub(super) fn state(dev: &dyn BlockRead, sb: &Superblock) -> LogState {
    if sb.logstart == 0 {
        return LogState::Unknown("the log is on an external device".into());
    }
    let Ok(start) = sb.extent_offset(sb.logstart, sb.logblocks as u64) else {
        return LogState::Unknown("the log lies outside the filesystem".into());
    };
    let ring = Ring {
        dev,
        start,
        bbs: (sb.logblocks as u64) << (sb.blocklog - 9),
    };
    if ring.bbs < 2 {
        return LogState::Unknown("the log is empty".into());
    }
    let unreadable = || LogState::Unknown("the log could not be read".into());
    let (Some(first), Some(last)) = (ring.cycle(0), ring.cycle(ring.bbs - 1)) else {
        return unreadable();
    };
    let head = if first == last {
        ring.bbs
    } else {
        // Blocks 0..head carry `first`; head..bbs an older cycle.
        let (mut lo, mut hi) = (0u64, ring.bbs - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match ring.cycle(mid) {
                Some(c) if c == first => lo = mid,
                Some(_) => hi = mid,
                None => return unreadable(),
            }
        }
        hi
    };
    // The last record header before the head (in the ring, so below block 0 wraps).
    let mut found = None;
    for back in 1..=SEARCH_BBS.min(ring.bbs) {
        let bb = (head + ring.bbs - back) % ring.bbs;
        let Some(b) = ring.block(bb) else {
            return unreadable();
        };
        if b[..4] == HEADER_MAGIC.to_be_bytes() {
            found = Some((bb, b));
            break;
        }
    }
    let Some((bb, hdr)) = found else {
        return LogState::Unknown("no log record header before the head".into());
    };
    let r = Be::new(&hdr, "XFS log record header");
    let (Ok(version), Ok(num_ops), Ok(h_size)) = (r.u32(8), r.u32(40), r.u32(320)) else {
        return unreadable();
    };
    if num_ops != 1 {
        return LogState::Dirty;
    }
    // Version 2 logs with records over 32 KiB spread the header over several blocks.
    let hblks = if version >= 2 && h_size > 32768 {
        u64::from(h_size.div_ceil(32768)).min(8)
    } else {
        1
    };
    let Some(op) = ring.block(bb + hblks) else {
        return unreadable();
    };
    // xlog_op_header: tid, len, clientid, flags (the first word is the cycle stamp).
    if op[9] & UNMOUNT_TRANS != 0 {
        LogState::Clean
    } else {
        LogState::Dirty
    }
}
