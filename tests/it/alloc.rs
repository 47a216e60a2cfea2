//! The tensor allocator: large blocks line-aligned through alloc, zeroed alloc and
//! every realloc path (growing, shrinking, crossing the size threshold), contents
//! kept. The whole `it` binary also runs on it (see `main.rs`).

use std::alloc::{GlobalAlloc, Layout};

use vssl::alloc::TensorAlloc;

const A: TensorAlloc = TensorAlloc;

fn fill(p: *mut u8, n: usize, salt: u8) {
    for i in 0..n {
        // SAFETY: `p` holds `n` bytes.
        unsafe {
            p.add(i)
                .write((i as u8).wrapping_mul(31).wrapping_add(salt))
        };
    }
}

fn check(p: *const u8, n: usize, salt: u8) {
    for i in 0..n {
        // SAFETY: `p` holds at least `n` bytes.
        let got = unsafe { p.add(i).read() };
        assert_eq!(
            got,
            (i as u8).wrapping_mul(31).wrapping_add(salt),
            "byte {i}"
        );
    }
}

#[test]
fn large_blocks_are_line_aligned_and_small_ones_keep_their_alignment() {
    for &(size, align) in &[
        (16 << 10, 4),
        ((16 << 10) + 4, 4),
        (1 << 20, 8),
        (3 << 20, 16),
        (40 << 20, 4), // past glibc's mmap threshold
        (100, 4),
        (4096, 8),
        (20 << 10, 128), // a stricter alignment is the system's business
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: valid non-zero layouts; each block freed with its layout.
        unsafe {
            let p = A.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "size {size}");
            if size >= 16 << 10 {
                assert_eq!(p as usize % 64, 0, "size {size} not line-aligned");
            }
            fill(p, size, 7);
            check(p, size, 7);
            A.dealloc(p, l);
            let z = A.alloc_zeroed(l);
            assert!(!z.is_null());
            if size >= 16 << 10 {
                assert_eq!(z as usize % 64, 0);
            }
            assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
            A.dealloc(z, l);
        }
    }
}

#[test]
fn realloc_keeps_contents_on_every_path() {
    // small -> big -> bigger -> mmap-sized -> smaller big -> small
    let sizes = [
        1000,
        20 << 10,
        300 << 10,
        40 << 20,
        64 << 10,
        2000,
        17 << 10,
    ];
    let mut l = Layout::from_size_align(sizes[0], 4).unwrap();
    // SAFETY: each step reallocates the live block with its current layout.
    unsafe {
        let mut p = A.alloc(l);
        fill(p, l.size(), 3);
        for &n in &sizes[1..] {
            let keep = l.size().min(n);
            p = A.realloc(p, l, n);
            assert!(!p.is_null());
            check(p, keep, 3);
            if n >= 16 << 10 {
                assert_eq!(p as usize % 64, 0, "size {n}");
            }
            l = Layout::from_size_align(n, 4).unwrap();
            fill(p, n, 3);
        }
        A.dealloc(p, l);
    }
}

#[test]
fn many_interleaved_blocks_stay_intact() {
    // A seeded mix of sizes around the threshold, freed out of order.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    for k in 0..400u32 {
        let size = match next() % 3 {
            0 => (next() % 4096 + 1) as usize,
            1 => (16 << 10) - 64 + (next() % 128) as usize,
            _ => (next() % (2 << 20) + 1) as usize,
        };
        let l = Layout::from_size_align(size, 4).unwrap();
        // SAFETY: valid layouts; every block freed once with its layout.
        unsafe {
            let p = A.alloc(l);
            let salt = k as u8;
            fill(p, size, salt);
            live.push((p, l, salt));
            if next() % 2 == 0 {
                let i = (next() as usize) % live.len();
                let (q, ql, qs) = live.swap_remove(i);
                check(q, ql.size(), qs);
                A.dealloc(q, ql);
            }
        }
    }
    for (q, ql, qs) in live {
        check(q, ql.size(), qs);
        // SAFETY: as above.
        unsafe { A.dealloc(q, ql) };
    }
}
