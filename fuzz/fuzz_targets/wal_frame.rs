//! Fuzz target `wal_frame`: see `checks/wal_frame.rs` for the properties. On top of them this
//! target counts allocations: decoding a frame must allocate nothing, whatever length it reads.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use libfuzzer_sys::fuzz_target;

#[path = "../checks/wal_frame.rs"]
mod wal_frame;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations per thread.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fuzz_target!(|data: &[u8]| {
    let (max_record, buf) = wal_frame::split(data);
    let before = allocations();
    let decoded = wal::frame::decode(buf, max_record);
    let header = wal::frame::decode_header(buf);
    let snapshot = wal::frame::decode_snapshot(buf);
    assert_eq!(allocations(), before, "decoding allocated");
    drop((decoded, header, snapshot));
    wal_frame::check(data);
});
