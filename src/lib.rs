//! cairn: a deduplicating, content-addressed backup repository for VM disk images.
//!
//! Layers depend downward only:
//! `cli` → `backup` / `restore` / `check` → `snapshot` / `chunker` / `image` → `repo` → `crypto` /
//! `backend`. See `repo-format.md` for every byte this crate writes.

pub mod backend;
pub mod backup;
pub mod blockdev;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod crypto;
pub mod error;
pub mod files;
pub mod forget;
pub mod fs;
pub mod gc;
pub mod id;
pub mod image;
pub mod mapping;
pub mod progress;
pub mod repair;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod vm;

#[cfg(test)]
mod testalloc;

/// A named point where tests kill the process with SIGKILL (`CAIRN_CRASH_AT=<point>`),
/// to prove that a crash there leaves a sound repository. Costs one env lookup per point.
pub(crate) fn crash_point(name: &str) {
    if std::env::var("CAIRN_CRASH_AT").is_ok_and(|v| v == name) {
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Makes glibc's malloc serve every allocation of 4 MiB or more with a map of its own,
/// returned to the system when freed. By default the threshold moves up to the size of the
/// largest such block freed, so once one segment's sealed blobs (one buffer of up to
/// 16 MiB, `seal_blob_into`) were freed, the next ones came from the worker threads'
/// arenas, which keep what was freed: the peak memory of an 8 GiB backup went from 110 to
/// 199 MiB (BENCHMARKS.md J). Setting the threshold once turns the moving off. Every
/// command sets it at its start: prune reads each 32 MiB pack it repacks into one buffer,
/// and once the first was freed the next ones stayed in the heap, a peak of 113 MiB instead
/// of 70 MiB on the corpus (K6).
pub fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // mallopt only changes a tunable of the allocator; 4 MiB is a valid threshold.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        });
    }
}

/// A mutex's guard, also after a thread panicked while holding it: the data behind cairn's
/// mutexes are caches and collected results, which stay usable (and a panic is reported
/// where it happened).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[global_allocator]
static ALLOC: testalloc::Tracking = testalloc::Tracking;

pub use error::{Error, Result};
pub use id::Id;
