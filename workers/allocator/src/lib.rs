//! The workers' allocator: mimalloc, asked for an aligned block only where the alignment
//! needs one, and the process's `malloc`.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every allocation. Its
//! fast path takes a block only when the free block at hand happens to be aligned and
//! the size is at most 1 KiB; otherwise (a delivery's future, a payload) it takes the
//! generic path and may over-allocate. Every mimalloc block is aligned to 8 bytes (its
//! smallest size class is one word), so a layout aligned to at most 8 needs only
//! `mi_malloc` (docs/benchmarks.md, "The allocator").
//!
//! It is the process's `malloc` too (libmimalloc-sys's `override` feature): librdkafka's
//! allocations, about ten per Kafka record, made on one of its threads and freed on
//! another, go to mimalloc rather than glibc (a Kafka worker's allocation calls, Rust's
//! and C's, went from 4,876 to 2,734 instructions per record). [`unmap_large_blocks`]
//! keeps the peak RSS near glibc's: without it mimalloc serves librdkafka's fetch and
//! produce buffers from its arenas and keeps them, and a worker's peak RSS rose from
//! ~50 MiB to 82–88 MiB (docs/benchmarks.md, "The allocator").
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: courier_allocator::MiMalloc = courier_allocator::MiMalloc;
//!
//! fn main() {
//!     courier_allocator::unmap_large_blocks();
//!     // …
//! }
//! ```

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment every mimalloc block has (a word).
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc's options ([`unmap_large_blocks`] sets one): their places in `mi_option_e`
/// (`mimalloc.h` of the mimalloc that libmimalloc-sys builds; a test checks their defaults).
mod option {
    use std::ffi::{c_int, c_long};

    /// How long freed pages are kept before they go back to the OS (ms).
    #[cfg(test)]
    pub(super) const PURGE_DELAY: c_int = 15;
    /// The largest block an arena serves (KiB); larger ones are mapped for themselves and
    /// unmapped when freed.
    pub(super) const ARENA_MAX_OBJECT_SIZE: c_int = 45;

    #[allow(unsafe_code)]
    unsafe extern "C" {
        /// Sets an option's value unless the environment set it (`MIMALLOC_<NAME>`).
        pub(super) fn mi_option_set_default(option: c_int, value: c_long);
        /// An option's value.
        #[cfg(test)]
        pub(super) fn mi_option_get(option: c_int) -> c_long;
    }
}

/// Have mimalloc treat large blocks as glibc's malloc does: a block over 128 KiB
/// (librdkafka's fetch and produce buffers) is mapped for itself and unmapped when freed,
/// not kept in an arena. `MIMALLOC_ARENA_MAX_OBJECT_SIZE` (KiB), when set, decides instead.
/// Call it first thing in `main`.
pub fn unmap_large_blocks() {
    // SAFETY: setting an option's value is what this call is for; mimalloc reads it when it
    // next allocates a large block.
    #[allow(unsafe_code)]
    unsafe {
        option::mi_option_set_default(option::ARENA_MAX_OBJECT_SIZE, 128);
    }
}

/// mimalloc as the global allocator.
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

/// Whether `align` needs mimalloc's aligned calls.
const fn needs_aligned(align: usize) -> bool {
    align > BLOCK_ALIGN
}

// SAFETY: every pointer handed out comes from mimalloc with at least the layout's size and
// alignment (a plain block is aligned to `BLOCK_ALIGN`; larger alignments take the aligned
// calls), and every pointer taken back is one mimalloc handed out, which `mi_free` and
// `mi_realloc*` accept whichever call allocated it.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls take any size and a power-of-two alignment.
        unsafe {
            if needs_aligned(layout.align()) {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            } else {
                mi_malloc(layout.size()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if needs_aligned(layout.align()) {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            } else {
                mi_zalloc(layout.size()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract), so from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps the layout's alignment.
        unsafe {
            if needs_aligned(layout.align()) {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            } else {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[global_allocator]
    static ALLOCATOR: MiMalloc = MiMalloc;

    /// A layout from a size and a power of two.
    fn layout(size: usize, align_log2: u32) -> Layout {
        Layout::from_size_align(size.max(1), 1 << align_log2).expect("a valid layout")
    }

    proptest! {
        /// Any size (small ones more often) and alignment (up to 4 KiB): the block is aligned, holds its size, and
        /// keeps its bytes through a realloc to any other size.
        #[test]
        fn blocks_are_aligned_and_keep_their_bytes(
            size in prop_oneof![1usize..300, 1usize..70_000],
            new_size in prop_oneof![1usize..300, 1usize..70_000],
            align_log2 in 0u32..13,
            zeroed in any::<bool>(),
        ) {
            let layout = layout(size, align_log2);
            // SAFETY: a non-zero size; the block is written within its size, checked, and
            // freed with the layout it has.
            #[allow(unsafe_code)]
            unsafe {
                let block = if zeroed { ALLOCATOR.alloc_zeroed(layout) } else { ALLOCATOR.alloc(layout) };
                prop_assert!(!block.is_null());
                prop_assert_eq!(block as usize % layout.align(), 0);
                if zeroed {
                    prop_assert!(std::slice::from_raw_parts(block, size).iter().all(|b| *b == 0));
                }
                for i in 0..size {
                    block.add(i).write(i as u8);
                }
                let moved = ALLOCATOR.realloc(block, layout, new_size);
                prop_assert!(!moved.is_null());
                prop_assert_eq!(moved as usize % layout.align(), 0);
                for i in 0..size.min(new_size) {
                    prop_assert_eq!(moved.add(i).read(), i as u8);
                }
                ALLOCATOR.dealloc(moved, Layout::from_size_align(new_size, layout.align()).expect("a valid layout"));
            }
        }
    }

    #[test]
    fn the_options_set_are_the_ones_meant() {
        // SAFETY: reading an option's value.
        #[allow(unsafe_code)]
        let read = |option| unsafe { option::mi_option_get(option) };
        // mimalloc's defaults at the places named (another place holds another default):
        // a second's purge delay, 2 GiB (in KiB) for an arena's largest block.
        assert_eq!(read(option::PURGE_DELAY), 1_000);
        assert_eq!(read(option::ARENA_MAX_OBJECT_SIZE), 2 * 1024 * 1024);
        unmap_large_blocks();
        assert_eq!(read(option::PURGE_DELAY), 1_000, "left as it was");
        assert_eq!(read(option::ARENA_MAX_OBJECT_SIZE), 128);
        let block = vec![1u8; 1 << 20];
        assert_eq!(block.iter().map(|b| usize::from(*b)).sum::<usize>(), 1 << 20, "a large block still works");
    }

    #[test]
    fn word_aligned_layouts_take_the_plain_calls() {
        assert!(!needs_aligned(1));
        assert!(!needs_aligned(8));
        assert!(needs_aligned(16));
        assert!(needs_aligned(128));
    }

    #[test]
    fn collections_work_on_it() {
        let mut strings: Vec<String> = (0..10_000).map(|i| format!("value {i}")).collect();
        strings.retain(|s| s.ends_with('7'));
        assert_eq!(strings.len(), 1_000);
        assert_eq!(strings[0], "value 7");
    }
}
