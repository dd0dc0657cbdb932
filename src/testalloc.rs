//! Unit tests only: the system allocator, recording the largest single allocation each
//! thread made since its last [`reset`], so mutation tests can prove that no on-disk number
//! sizes an allocation without a cap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Tracking;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

fn note(size: usize) {
    // try_with: no panic while a thread's locals are being torn down.
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

/// Starts a new measurement on this thread.
pub fn reset() {
    let _ = PEAK.try_with(|p| p.set(0));
}

/// The largest single allocation on this thread since [`reset`].
pub fn peak() -> usize {
    PEAK.try_with(|p| p.get()).unwrap_or(0)
}
