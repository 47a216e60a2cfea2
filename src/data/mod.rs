//! Video data: decoded/generated videos, datasets, clip sampling and batching.
//! Everything upstream of the model lives here, so methods only see [`clip::Batch`].

pub mod augment;
pub mod bad_videos;
pub mod cache;
pub mod clip;
pub mod config;
pub mod datasets;
#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod encode;
pub mod files;
pub mod loader;
pub mod sampler;
#[cfg(feature = "video")]
pub mod scan_memo;
pub mod splits;
pub mod synthetic;

pub use config::{DataConfig, DataKind};

/// A decoded (or generated) video held in memory: RGB bytes laid out `[T, H, W, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Video {
    /// Byte offset of pixel (t, y, x), channel 0.
    #[inline]
    pub fn offset(&self, t: usize, y: usize, x: usize) -> usize {
        ((t * self.height + y) * self.width + x) * 3
    }

    /// One frame as RGB bytes `[H, W, 3]`.
    pub fn frame(&self, t: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.data[t * n..(t + 1) * n]
    }
    /// Hands the frame buffer back for the next video decoded on this thread. A loader
    /// worker that recycles decodes every video into memory it has already touched:
    /// no page faults, no zeroing by the kernel (which otherwise costs about as much
    /// as decoding itself).
    pub fn recycle(self) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if self.data.capacity() > s.capacity() {
                *s = self.data;
            }
        });
    }
}

thread_local! {
    static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer with the capacity of the largest video recycled on this thread.
pub fn spare_buffer() -> Vec<u8> {
    SPARE.with(|s| {
        let mut v = std::mem::take(&mut *s.borrow_mut());
        v.clear();
        v
    })
}

/// Which half of a labelled dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}
