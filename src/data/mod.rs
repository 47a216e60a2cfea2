//! Video data: decoded/generated videos, datasets, clip sampling and batching.
//! Everything upstream of the model lives here, so methods only see [`crate::pretext::Batch`].

pub mod augment;
pub mod cache;
pub mod datasets;
#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod encode;
pub mod loader;
pub mod sampler;
pub mod synthetic;

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
}

/// Which half of a labelled dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}
