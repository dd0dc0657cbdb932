//! Read-only memory maps of source files, so a backup hashes and chunks a raw image's
//! bytes where they lie in the page cache instead of copying them out first. On a warm
//! cache that copy is as costly as the hashing itself (BENCHMARKS.md L).
//!
//! The price of a map is that a file which shrinks while mapped (or storage that fails a
//! read) raises SIGBUS where `read()` would return an error. A handler turns that into the
//! same clear message and exit status as the `read()` path: every live map registers the
//! message naming its file, and the handler finds the map by the faulting address. A
//! SIGBUS outside every map gets the default action. Nothing is committed either way: the
//! snapshot is written last.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

/// A read-only map of `len` bytes of a file, unmapped on drop.
pub struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    /// Where the asked-for bytes start inside the map (the map starts page-aligned).
    skip: usize,
    len: usize,
    slot: Option<usize>,
}

// The map is read-only and owned by this value.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` at `offset`. `what` is the message printed if the bytes
    /// vanish while mapped. None if the map cannot be made: the caller reads instead.
    pub fn new(file: &File, offset: u64, len: usize, what: String) -> Option<Mapping> {
        if len == 0 {
            return None;
        }
        let page = page_size();
        let skip = (offset % page as u64) as usize;
        let map_len = len.checked_add(skip)?;
        let at = libc::off_t::try_from(offset - skip as u64).ok()?;
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                at,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        install_handler();
        let slot = register(base as usize, map_len, what);
        Some(Mapping {
            base,
            map_len,
            skip,
            len,
            slot,
        })
    }

    /// Faults in the pages of `r` (relative to the mapped bytes) now, on the caller's
    /// thread and with the kernel's read-ahead, so whoever reads them next does not wait.
    /// Only a hint: on a kernel without MADV_POPULATE_READ (before 5.14) pages fault in
    /// when read.
    pub fn populate(&self, r: std::ops::Range<usize>) {
        let page = page_size();
        let start = (self.skip + r.start.min(self.len)) / page * page;
        let end = self.skip + r.end.min(self.len);
        self.advise(start..end, libc::MADV_POPULATE_READ);
    }

    /// Drops from this process's memory the pages from the one holding `r.start` up to
    /// the last one that ends inside `r`: a caller done with every byte before `r.end`
    /// releases the pages as it goes. The backup's peak memory then holds about one
    /// segment per worker, not a segment plus its sealed blobs (BENCHMARKS.md J). The bytes
    /// stay readable: a later read faults them in again from the file (on a read-only
    /// shared map of a file that nothing writes, they are the same bytes). Only a hint,
    /// like `populate`.
    pub fn release(&self, r: std::ops::Range<usize>) {
        let page = page_size();
        let start = (self.skip + r.start.min(self.len)) / page * page;
        let end = (self.skip + r.end.min(self.len)) / page * page;
        self.advise(start..end, libc::MADV_DONTNEED);
    }

    /// madvise(2) over `r`, offsets from the map's page-aligned base.
    fn advise(&self, r: std::ops::Range<usize>, advice: libc::c_int) {
        if r.start < r.end && r.end <= self.map_len {
            // Inside the map, which lives as long as `self`.
            unsafe {
                let at = (self.base as *mut u8).add(r.start) as *mut libc::c_void;
                libc::madvise(at, r.end - r.start, advice);
            }
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // The map is `map_len` readable bytes from `base`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts((self.base as *const u8).add(self.skip), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            SLOTS[s].end.store(0, Ordering::Release);
            SLOTS[s].start.store(0, Ordering::Release);
            let msg = SLOTS[s].msg.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !msg.is_null() {
                drop(unsafe { Box::from_raw(msg) });
            }
            SLOTS[s].taken.store(0, Ordering::Release);
        }
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

fn page_size() -> usize {
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Live maps, for the handler: address range and the message naming the file.
struct Slot {
    taken: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    msg: AtomicPtr<Vec<u8>>,
}

/// More maps than a backup holds at once (one per segment in flight).
const SLOTS_N: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    taken: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    msg: AtomicPtr::new(std::ptr::null_mut()),
};
static SLOTS: [Slot; SLOTS_N] = [FREE; SLOTS_N];

/// Registers a map; None if every slot is taken (the map then works, its SIGBUS just gets
/// the default action).
fn register(start: usize, len: usize, what: String) -> Option<usize> {
    let s = (0..SLOTS_N).find(|&i| {
        SLOTS[i]
            .taken
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    let mut msg = format!("cairn: error: {what}\n").into_bytes();
    msg.shrink_to_fit();
    SLOTS[s]
        .msg
        .store(Box::into_raw(Box::new(msg)), Ordering::Release);
    SLOTS[s].start.store(start, Ordering::Release);
    SLOTS[s].end.store(start + len, Ordering::Release);
    Some(s)
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    });
}

/// Only async-signal-safe work: atomic loads, write(2), _exit(2).
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &SLOTS {
        let (start, end) = (
            s.start.load(Ordering::Acquire),
            s.end.load(Ordering::Acquire),
        );
        if start <= addr && addr < end {
            let msg = s.msg.load(Ordering::Acquire);
            if !msg.is_null() {
                let m = unsafe { &*msg };
                unsafe { libc::write(2, m.as_ptr() as *const libc::c_void, m.len()) };
            }
            unsafe { libc::_exit(1) };
        }
    }
    // Not one of ours: the default action, when the faulting access runs again.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_map_holds_the_files_bytes_at_any_offset() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        for (off, len) in [(0, 100_000), (4096, 5000), (12345, 70_000), (99_999, 1)] {
            let m = Mapping::new(&f, off as u64, len, "test".into()).unwrap();
            m.populate(0..len);
            m.populate(len / 2..len + 100);
            assert_eq!(m.bytes(), &data[off..off + len]);
            // Released pages read back the same bytes, faulted in again from the file.
            m.release(0..len / 2);
            m.release(len / 3..len + 100);
            assert_eq!(m.bytes(), &data[off..off + len]);
        }
        assert!(Mapping::new(&f, 0, 0, "empty".into()).is_none());
    }
}
