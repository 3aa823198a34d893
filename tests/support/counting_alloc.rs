//! A global allocator that counts allocations, for the tests that check a
//! path allocates nothing. Each such test crate includes this file (by
//! `#[path]`, not through `support`, so no other test crate carries unsafe
//! code it does not use) and declares its own
//! `#[global_allocator] static GLOBAL: Counting = Counting;`.
// A global allocator needs `unsafe impl`; it only counts and delegates.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts each allocation and leaves it to the system allocator.
pub(crate) struct Counting;

thread_local! {
    /// Allocations made by this thread. Per thread, because the test
    /// harness's own threads allocate at moments of their own (a waiting
    /// thread's first block on a channel, for one), which a loaded machine
    /// moves into a measured window.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations so far by the calling thread (the code the tests measure
/// runs on it).
pub(crate) fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Not during the thread's teardown, when its counter is gone.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}
