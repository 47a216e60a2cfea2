//! The process allocator, tuned for tensors: large blocks aligned to a cache line
//! and kept in the heap between training steps.
//!
//! Why it exists: the CPU kernels move 16 floats per AVX-512 load, and glibc hands
//! out large blocks 16 bytes past a page or chunk boundary, so every vector load of a
//! tensor or kernel scratch buffer straddled two cache lines. And glibc serves blocks
//! over its mmap threshold with fresh mappings and trims the heap top past 128 KiB,
//! so each step re-faulted and re-zeroed tens of megabytes of pages for activations
//! and gradients (about 8% of an R3D-18 CPU step in page faults). The binary installs
//! [`TensorAlloc`] as its global allocator and calls [`tune_heap`] first thing; a
//! program that uses vssl as a library gets the same with
//! `#[global_allocator] static A: vssl::alloc::TensorAlloc = vssl::alloc::TensorAlloc;`
//! and a call to [`tune_heap`] at start (results do not depend on either).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are aligned to [`LINE`].
const BIG: usize = 16 << 10;
/// A cache line (and one AVX-512 vector).
const LINE: usize = 64;

/// The system allocator with blocks of 16 KiB or more aligned to 64 bytes.
///
/// A large block is allocated `LINE` bytes longer and handed out at the next line
/// boundary past its start; the block's own start sits in the 8 bytes before it (the
/// system allocator aligns to 16, so there are at least 16 bytes of slack). This
/// keeps glibc's `calloc` (fresh mappings need no zeroing) and `realloc`, which an
/// aligned `posix_memalign` layout would lose, and `posix_memalign`'s split-off
/// chunks measurably fragmented the heap (peak RSS +50% on an R3D-18 step).
/// Deallocation sees the same size as allocation, so both take the same branch.
pub struct TensorAlloc;

/// Whether `layout` gets the line-aligned treatment.
fn big(layout: &Layout) -> bool {
    layout.size() >= BIG && layout.align() <= 16
}

/// The user pointer for a system block at `base`, its start recorded before it.
///
/// # Safety
/// `base` must be a live block of at least `LINE` + the user size bytes, 16-aligned.
unsafe fn hand_out(base: *mut u8) -> *mut u8 {
    if base.is_null() {
        return base;
    }
    let user = base.add(LINE - (base as usize % LINE));
    user.cast::<*mut u8>().sub(1).write(base);
    user
}

/// The system block behind a user pointer from [`hand_out`].
///
/// # Safety
/// `user` must come from [`hand_out`].
unsafe fn base_of(user: *mut u8) -> *mut u8 {
    user.cast::<*mut u8>().sub(1).read()
}

/// The system layout of a big block (`LINE` bytes longer, 16-aligned).
fn sys(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(LINE)?, 16).ok()
}

/// A block for `layout` from `get` (a `System` allocation): as asked for small
/// layouts, line-aligned inside a longer block for big ones.
///
/// # Safety
/// `get` must return a live block of its layout, or null.
unsafe fn with_system(layout: Layout, get: impl FnOnce(Layout) -> *mut u8) -> *mut u8 {
    if !big(&layout) {
        return get(layout);
    }
    match sys(layout.size()) {
        Some(l) => hand_out(get(l)),
        None => std::ptr::null_mut(),
    }
}

// SAFETY: small layouts go to `System` unchanged. A big block is a `System` block of
// `sys(size)`, handed out inside its bounds (offset 16..=64, `size` bytes after it);
// the same size test on deallocation and reallocation finds it again, and the block
// is freed with the layout it was allocated with.
unsafe impl GlobalAlloc for TensorAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        with_system(layout, |l| System.alloc(l))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        with_system(layout, |l| System.alloc_zeroed(l))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !big(&layout) {
            return System.dealloc(ptr, layout);
        }
        // `sys` succeeded when this block was allocated.
        if let Some(l) = sys(layout.size()) {
            System.dealloc(base_of(ptr), l);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (big(&layout), big(&new)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) => {
                let (Some(old_l), Some(new_l)) = (sys(layout.size()), sys(new_size)) else {
                    return std::ptr::null_mut();
                };
                let base = base_of(ptr);
                let off = ptr.offset_from(base) as usize;
                let nb = System.realloc(base, old_l, new_l.size());
                if nb.is_null() {
                    return nb;
                }
                let user = nb.add(LINE - (nb as usize % LINE));
                // The data moved with the block to `nb + off`; shift it to the new
                // line boundary when the block's alignment within a line changed.
                let src = nb.add(off);
                if src != user {
                    std::ptr::copy(src, user, layout.size().min(new_size));
                }
                user.cast::<*mut u8>().sub(1).write(nb);
                user
            }
            // Crossing the threshold: a fresh block of the other kind.
            _ => {
                let out = self.alloc(new);
                if !out.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, out, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                out
            }
        }
    }
}

/// Keeps freed large blocks in the heap instead of handing them back to the kernel
/// (glibc only; elsewhere a no-op). Peak memory is unchanged: the blocks are needed
/// again by the next step. `VSSL_MALLOC_TUNE=0` leaves glibc's defaults. Returns
/// whether the settings took. Call it before other threads start.
pub fn tune_heap() -> bool {
    if std::env::var_os("VSSL_MALLOC_TUNE").is_some_and(|v| v == "0") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc refuses mmap thresholds over 32 MiB on 64-bit hosts; blocks beyond it
        // (a batch-8 layer-1 activation of R3D-18 is ~100 MB) stay mmapped.
        const MMAP_MAX: libc::c_int = 32 << 20;
        // SAFETY: mallopt only changes allocator parameters.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_MAX);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
