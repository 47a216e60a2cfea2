//! How a cached video's frames are stored: raw RGB (`[T, H, W, 3]`, read with one
//! positioned read) or one JPEG per frame (`data.cache_format = "jpeg"`), about ten
//! times smaller and decoded on read. A JPEG chunk starts with a table of each frame's
//! byte length (little-endian `u32`), so one frame can be read without the others.

use serde::{Deserialize, Serialize};

use crate::data::Video;
use crate::{Error, Result};

/// `data.cache_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheFormat {
    /// Raw RGB bytes: largest, no decoding on read.
    #[default]
    Raw,
    /// One baseline JPEG per frame (4:2:0, quality `data.cache_quality`).
    Jpeg,
}

impl CacheFormat {
    pub fn is_raw(&self) -> bool {
        *self == CacheFormat::Raw
    }
}

/// One video as it goes into the frame file.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub bytes: Vec<u8>,
}

/// Stores `video` in `format` (JPEG at `quality`, 1..=100).
pub fn encode(video: Video, format: CacheFormat, quality: u8) -> Result<Chunk> {
    let (frames, height, width) = (video.frames, video.height, video.width);
    let bytes = match format {
        CacheFormat::Raw => video.data,
        CacheFormat::Jpeg => {
            let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => {
                    return Err(Error::BadInput(format!(
                        "frames of {width}x{height} are too large for a JPEG cache (at most 65535 pixels a side)"
                    )))
                }
            };
            let mut out = vec![0u8; 4 * frames];
            for t in 0..frames {
                let start = out.len();
                let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
                enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
                enc.encode(video.frame(t), w, h, jpeg_encoder::ColorType::Rgb)
                    .map_err(|e| Error::Internal(format!("JPEG encoding of frame {t}: {e}")))?;
                let len = (out.len() - start) as u32;
                out[4 * t..4 * t + 4].copy_from_slice(&len.to_le_bytes());
            }
            out
        }
    };
    Ok(Chunk {
        frames,
        height,
        width,
        bytes,
    })
}

/// Byte ranges of each frame inside a JPEG chunk whose first `4 * frames` bytes are
/// `table`; `None` when the table does not fit in `chunk_len` bytes.
pub fn frame_ranges(table: &[u8], chunk_len: u64) -> Option<Vec<(u64, u64)>> {
    let mut at = table.len() as u64;
    let mut out = Vec::with_capacity(table.len() / 4);
    for len in table.chunks_exact(4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as u64;
        let end = at.checked_add(len).filter(|&e| e <= chunk_len)?;
        out.push((at, end));
        at = end;
    }
    Some(out)
}

/// Decodes one cached JPEG frame into `out` (`height * width * 3` RGB bytes).
pub fn decode_jpeg(data: &[u8], width: usize, height: usize, out: &mut [u8]) -> Result<()> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), opts);
    dec.decode_headers()
        .map_err(|e| Error::BadInput(format!("damaged JPEG frame: {e:?}")))?;
    let info = dec
        .info()
        .ok_or_else(|| Error::BadInput("damaged JPEG frame: no header".into()))?;
    if (info.width as usize, info.height as usize) != (width, height)
        || out.len() != width * height * 3
    {
        return Err(Error::BadInput(format!(
            "JPEG frame is {}x{}, the index says {width}x{height}",
            info.width, info.height
        )));
    }
    dec.decode_into(out)
        .map_err(|e| Error::BadInput(format!("damaged JPEG frame: {e:?}")))
}
