//! The server's memory allocator: mimalloc, called the way C calls it.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to `mi_malloc_aligned`,
//! whatever its alignment. In mimalloc 3 that path checks the free block's address at run
//! time, and for blocks over 1 KiB (the boxed futures of the request path) or sizes that are
//! not a power of two it falls back to a generic path that over-allocates: 52 allocations
//! per lifecycle request spent ~3,500 instructions there (callgrind), about a third of it in
//! the alignment layers alone. Every mimalloc block is a whole number of 8-byte words from a
//! page start aligned to at least 16 bytes (`MI_PAGE_MIN_START_BLOCK_ALIGN`), so plain
//! `mi_malloc` is 8-aligned for any size: [`MiMalloc`] uses it (and `mi_zalloc`,
//! `mi_realloc`) for alignments up to 8, and the aligned functions only above that.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as ffi;

/// Largest alignment every mimalloc block has (one machine word).
const WORD_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (`#[global_allocator]` in the `flinger` binary).
pub struct MiMalloc;

// SAFETY: every pointer returned comes from mimalloc with at least `layout.size()` bytes at
// `layout.align()` alignment (plain calls only when the alignment is at most one word, which
// every mimalloc block has), and `dealloc`/`realloc` pass back only such pointers.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            ffi::mi_malloc(layout.size()).cast()
        } else {
            ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            ffi::mi_zalloc(layout.size()).cast()
        } else {
            ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        ffi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    //! The allocator called directly (the test binary keeps the system allocator).

    use super::*;

    /// Sizes around mimalloc's bin edges and its small/medium/large limits.
    fn sizes() -> Vec<usize> {
        let mut sizes: Vec<usize> = (1..=80).collect();
        for base in [
            96,
            112,
            128,
            1000,
            1024,
            1025,
            1100,
            4096,
            5000,
            65536,
            70000,
            1 << 20,
        ] {
            sizes.extend([base - 1, base, base + 1]);
        }
        sizes
    }

    #[test]
    fn every_block_is_aligned_and_holds_its_bytes_when_sizes_and_alignments_vary() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in sizes() {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; the block is written within its size and
                // freed once with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "size {size} align {align}");
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed: size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                    let grown = a.realloc(p, layout, size * 3 + 7);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc: size {size} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|&b| b == 0xA5));
                    let grown_layout = Layout::from_size_align(size * 3 + 7, align).unwrap();
                    let shrunk = a.realloc(grown, grown_layout, size.div_ceil(2));
                    assert_eq!(
                        shrunk as usize % align,
                        0,
                        "shrink: size {size} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(shrunk, size.div_ceil(2))
                        .iter()
                        .all(|&b| b == 0xA5));
                    a.dealloc(
                        shrunk,
                        Layout::from_size_align(size.div_ceil(2), align).unwrap(),
                    );
                }
            }
        }
    }
}
