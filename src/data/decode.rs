//! Decoding video files into memory (feature `video`).
//!
//! Goes through ffmpeg as re-exported by video-rs (`video_rs::ffmpeg`), reading the
//! best video stream sequentially from the first packet to the end. Frames are indexed
//! by the order the decoder hands them out; timestamps and the container's frame count
//! are never consulted (AVI files written without presentation timestamps, variable
//! frame rates and lying headers all decode to the frames that are actually there).
//! Every frame is converted to RGB24 by swscale (bilinear), which also resizes it when
//! a shorter side is requested (in YUV first, then to RGB: see `Converter`). One decoder
//! thread per video, and the decoded, RGB and output buffers are reused (the output
//! through [`crate::data::Video::recycle`]). A single corrupt packet is skipped; anything else that
//! goes wrong is an [`Error::Video`] naming the file.

use std::path::Path;
use std::sync::Once;

use video_rs::ffmpeg;

use crate::data::Video;
use crate::{Error, Result};

fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Failure here resurfaces as an error when the input is opened.
        let _ = video_rs::init();
    });
}

/// Output size for a `w`x`h` frame whose shorter side becomes `short_side` (aspect kept,
/// rounded to the nearest pixel, at least 1).
pub fn resized_dims(w: usize, h: usize, short_side: Option<usize>) -> (usize, usize) {
    match short_side {
        None => (w, h),
        Some(s) if w <= h => {
            let nh = ((h as f64 * s as f64 / w.max(1) as f64).round() as usize).max(1);
            (s, nh)
        }
        Some(s) => {
            let nw = ((w as f64 * s as f64 / h.max(1) as f64).round() as usize).max(1);
            (nw, s)
        }
    }
}

/// Decodes every frame of the video at `path` as RGB bytes `[T, H, W, 3]`. With
/// `short_side`, frames are resized (bilinear) so that their shorter side has that many
/// pixels and the aspect ratio is kept. The frame count is the number of frames the
/// decoder produced. Errors (missing file, not a video, no video stream, no decodable
/// frame, zero `short_side`) are [`Error::Video`] naming `path`; never panics.
pub fn decode_video(path: &Path, short_side: Option<usize>) -> Result<Video> {
    decode_video_limited(path, short_side, None)
}

/// As [`decode_video`], but stops after the first `max_frames` frames (when given):
/// bounds the memory one decoded video takes whatever the file's length.
pub fn decode_video_limited(
    path: &Path,
    short_side: Option<usize>,
    max_frames: Option<usize>,
) -> Result<Video> {
    let fail = |message: String| Error::Video {
        path: path.to_path_buf(),
        message,
    };
    if short_side == Some(0) {
        return Err(fail("the requested shorter side must be at least 1".into()));
    }
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    init_ffmpeg();
    decode_frames(path, short_side, max_frames.unwrap_or(usize::MAX)).map_err(fail)
}

/// The RGB24 converter for one input geometry.
///
/// Resizing goes in two steps, in the source's own (planar YUV) format and then to
/// RGB24 at the final size: swscale's scaled path straight to packed RGB is about twice
/// as slow as resizing the planes and then taking its fast unscaled RGB conversion.
struct Converter {
    src: (ffmpeg::format::Pixel, u32, u32),
    /// Resize in the source format (absent when the size does not change).
    resize: Option<(ffmpeg::software::scaling::Context, ffmpeg::frame::Video)>,
    to_rgb: ffmpeg::software::scaling::Context,
}

impl Converter {
    fn new(
        src: (ffmpeg::format::Pixel, u32, u32),
        w: u32,
        h: u32,
    ) -> std::result::Result<Self, ffmpeg::Error> {
        use ffmpeg::{format::Pixel, software::scaling};
        let (fmt, sw, sh) = src;
        let bilinear = scaling::Flags::BILINEAR;
        if (sw, sh) != (w, h) {
            // Formats swscale cannot write fall back to the one-step conversion.
            if let (Ok(resize), Ok(to_rgb)) = (
                scaling::Context::get(fmt, sw, sh, fmt, w, h, bilinear),
                scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, bilinear),
            ) {
                return Ok(Self {
                    src,
                    resize: Some((resize, ffmpeg::frame::Video::empty())),
                    to_rgb,
                });
            }
        }
        Ok(Self {
            src,
            resize: None,
            to_rgb: scaling::Context::get(fmt, sw, sh, Pixel::RGB24, w, h, bilinear)?,
        })
    }

    fn run(
        &mut self,
        frame: &ffmpeg::frame::Video,
        rgb: &mut ffmpeg::frame::Video,
    ) -> std::result::Result<(), ffmpeg::Error> {
        match &mut self.resize {
            Some((ctx, small)) => {
                ctx.run(frame, small)?;
                self.to_rgb.run(small, rgb)
            }
            None => self.to_rgb.run(frame, rgb),
        }
    }
}

fn decode_frames(
    path: &Path,
    short_side: Option<usize>,
    max_frames: usize,
) -> std::result::Result<Video, String> {
    use ffmpeg::{format, media, Packet};
    let mut ictx = format::input(path).map_err(|e| format!("cannot open: {e}"))?;
    let (index, params) = {
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or("no video stream")?;
        (stream.index(), stream.parameters())
    };
    // One decoding thread per video: the loader parallelises across videos, and the
    // benchmark compares against `ffmpeg -threads 1`.
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(params)
        .and_then(|mut c| {
            c.set_threading(ffmpeg::codec::threading::Config::count(1));
            c.decoder().video()
        })
        .map_err(|e| format!("cannot open the video decoder: {e}"))?;

    let mut out = FrameSink {
        short_side,
        dims: None,
        conv: None,
        decoded: ffmpeg::frame::Video::empty(),
        rgb: ffmpeg::frame::Video::empty(),
        data: crate::data::spare_buffer(),
        frames: 0,
    };
    let mut corrupt = 0usize;
    loop {
        let mut packet = Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            // A demuxer resyncs past one corrupt packet; give up on a file made of them.
            Err(ffmpeg::Error::InvalidData) => {
                corrupt += 1;
                if corrupt > 1000 {
                    return Err("too many corrupt packets".into());
                }
                continue;
            }
            Err(e) => return Err(format!("read error after {} frames: {e}", out.frames)),
        }
        if packet.stream() != index {
            continue;
        }
        match decoder.send_packet(&packet) {
            Ok(()) => {}
            Err(ffmpeg::Error::InvalidData) => {
                corrupt += 1;
                if corrupt > 1000 {
                    return Err("too many undecodable packets".into());
                }
                continue;
            }
            Err(e) => return Err(format!("decode error after {} frames: {e}", out.frames)),
        }
        out.drain(&mut decoder)?;
        if out.frames >= max_frames {
            break;
        }
    }
    // Flush the frames the decoder still holds.
    if out.frames < max_frames && decoder.send_eof().is_ok() {
        out.drain(&mut decoder)?;
    }
    // A decoder may hand out several frames per packet: keep exactly the first `max_frames`.
    if out.frames > max_frames {
        if let Some((w, h)) = out.dims {
            out.data.truncate(max_frames * w * h * 3);
        }
        out.frames = max_frames;
    }
    let Some((w, h)) = out.dims else {
        return Err("no decodable video frame".into());
    };
    Ok(Video {
        frames: out.frames,
        height: h,
        width: w,
        data: out.data,
    })
}

/// Accumulates decoded frames as RGB24 at a fixed output size.
struct FrameSink {
    short_side: Option<usize>,
    /// Output (width, height), fixed by the first frame.
    dims: Option<(usize, usize)>,
    conv: Option<Converter>,
    /// Decoder output and RGB frames, reused for every frame (no allocation per frame).
    decoded: ffmpeg::frame::Video,
    rgb: ffmpeg::frame::Video,
    data: Vec<u8>,
    frames: usize,
}

impl FrameSink {
    /// Receives every frame the decoder has ready.
    fn drain(&mut self, decoder: &mut ffmpeg::decoder::Video) -> std::result::Result<(), String> {
        loop {
            match decoder.receive_frame(&mut self.decoded) {
                Ok(()) => self.push()?,
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                // A frame the decoder could not reconstruct: skip it, keep going.
                Err(ffmpeg::Error::InvalidData) => return Ok(()),
                Err(e) => return Err(format!("decode error after {} frames: {e}", self.frames)),
            }
        }
    }

    fn push(&mut self) -> std::result::Result<(), String> {
        let frame = &self.decoded;
        let (sw, sh) = (frame.width(), frame.height());
        if sw == 0 || sh == 0 {
            return Err("decoded frame has no pixels".into());
        }
        let (w, h) = *self
            .dims
            .get_or_insert_with(|| resized_dims(sw as usize, sh as usize, self.short_side));
        let src = (frame.format(), sw, sh);
        if self.conv.as_ref().is_none_or(|c| c.src != src) {
            let conv = Converter::new(src, w as u32, h as u32)
                .map_err(|e| format!("cannot convert {:?} {sw}x{sh} frames to RGB: {e}", src.0))?;
            self.conv = Some(conv);
        }
        let conv = self.conv.as_mut().expect("converter set above");
        let rgb = &mut self.rgb;
        conv.run(frame, rgb)
            .map_err(|e| format!("cannot convert frame {}: {e}", self.frames))?;
        let row = w * 3;
        let stride = rgb.stride(0);
        let plane = rgb.data(0);
        if stride < row || plane.len() < stride * (h - 1) + row {
            return Err(format!(
                "frame {}: unexpected RGB plane layout",
                self.frames
            ));
        }
        self.data.reserve(row * h);
        for y in 0..h {
            self.data
                .extend_from_slice(&plane[y * stride..y * stride + row]);
        }
        self.frames += 1;
        Ok(())
    }
}
