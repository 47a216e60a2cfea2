//! Writing videos to disk (feature `video`).
//!
//! Exists so the synthetic dataset can be exported as real video files in UCF101's
//! layout: the file-based pipeline (decoding, split files, clip sampling) can then be
//! exercised end to end without downloading anything, and the synthetic clips can be
//! looked at with any video player.
//!
//! Encoding goes through ffmpeg as re-exported by video-rs (`video_rs::ffmpeg`) rather
//! than `video_rs::encode::Encoder`: that encoder never sets the output stream's time
//! base, so the AVI muxer falls back to 600 fps and pads the index with hundreds of
//! empty frames (a 16-frame clip claims 361 frames at 600 fps). Here the codec and
//! stream time bases are both `1/fps`, B-frames are off (AVI stores no presentation
//! timestamps), and libx264 runs at `crf 18`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use video_rs::ffmpeg;

use crate::data::synthetic::{Synthetic, CLASS_NAMES};
use crate::data::{Split, Video};
use crate::{Error, Result};

/// What [`write_ucf101_layout`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub videos: usize,
    pub classes: usize,
}

/// Clips per group in the exported layout (UCF101 has 4 to 7).
const CLIPS_PER_GROUP: usize = 4;

fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Failure here resurfaces as an error when the encoder is created.
        let _ = video_rs::init();
    });
}

/// A sibling temporary path that keeps the extension (ffmpeg picks the container from it).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = match name.rsplit_once('.') {
        Some((stem, ext)) => format!(".{stem}.tmp.{ext}"),
        None => format!(".{name}.tmp"),
    };
    path.with_file_name(tmp)
}

/// Encodes `video` as H.264 (yuv420p) at `fps` frames per second; the container follows the
/// file extension (e.g. `.avi`, `.mp4`, `.mkv`). Width and height must be even. The file is
/// written under a temporary name and renamed, so a crash never leaves a partial file.
pub fn write_video(path: &Path, video: &Video, fps: u32) -> Result<()> {
    let fail = |message: String| Error::Video {
        path: path.to_path_buf(),
        message,
    };
    if video.width == 0 || video.height == 0 || video.frames == 0 {
        return Err(fail(format!(
            "empty video ({}x{}, {} frames)",
            video.width, video.height, video.frames
        )));
    }
    if !video.width.is_multiple_of(2) || !video.height.is_multiple_of(2) {
        return Err(fail(format!(
            "H.264 yuv420p needs even width and height, got {}x{}",
            video.width, video.height
        )));
    }
    if !(1..=1000).contains(&fps) {
        return Err(fail(format!("fps must be in 1..=1000, got {fps}")));
    }
    if video.data.len() != video.frames * video.height * video.width * 3 {
        return Err(fail(format!(
            "data holds {} bytes, expected {}",
            video.data.len(),
            video.frames * video.height * video.width * 3
        )));
    }
    init_ffmpeg();
    let tmp = temp_path(path);
    let result = encode_to(&tmp, video, fps).map_err(|e| fail(e.to_string()));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn encode_to(path: &Path, video: &Video, fps: u32) -> std::result::Result<(), ffmpeg::Error> {
    use ffmpeg::{codec, encoder, format, software::scaling, Packet, Rational};
    let (w, h) = (video.width as u32, video.height as u32);
    // 1/fps everywhere: AVI stores a frame rate, not timestamps, and takes it from the
    // stream time base, which must therefore be set before the header is written.
    let tb = Rational::new(1, fps as i32);

    let mut octx = format::output(path)?;
    let codec = encoder::find_by_name("libx264")
        .or_else(|| encoder::find(codec::Id::H264))
        .ok_or(ffmpeg::Error::EncoderNotFound)?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()?;
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(tb);
    enc.set_frame_rate(Some(Rational::new(fps as i32, 1)));
    // No B-frames: AVI has no presentation timestamps, so keep decode order = display order.
    enc.set_max_b_frames(0);
    enc.set_gop(fps.max(1));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("preset", "medium");
    opts.set("crf", "18");
    let mut enc = enc.open_as_with(codec, opts)?;

    let index = {
        let mut ost = octx.add_stream(codec)?;
        ost.set_parameters(&enc);
        ost.set_time_base(tb);
        ost.set_avg_frame_rate(Rational::new(fps as i32, 1));
        ost.index()
    };
    octx.write_header()?;
    let ost_tb = octx
        .stream(index)
        .ok_or(ffmpeg::Error::StreamNotFound)?
        .time_base();

    let mut scaler = scaling::Context::get(
        format::Pixel::RGB24,
        w,
        h,
        format::Pixel::YUV420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )?;
    let drain = |enc: &mut encoder::Video, octx: &mut format::context::Output| {
        let mut packet = Packet::empty();
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(index);
            packet.rescale_ts(tb, ost_tb);
            packet.write_interleaved(octx)?;
        }
        Ok::<_, ffmpeg::Error>(())
    };
    let row = video.width * 3;
    let mut rgb = ffmpeg::frame::Video::new(format::Pixel::RGB24, w, h);
    for t in 0..video.frames {
        let stride = rgb.stride(0);
        let src = video.frame(t);
        let dst = rgb.data_mut(0);
        for y in 0..video.height {
            dst[y * stride..y * stride + row].copy_from_slice(&src[y * row..(y + 1) * row]);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        scaler.run(&rgb, &mut yuv)?;
        yuv.set_pts(Some(t as i64));
        enc.send_frame(&yuv)?;
        drain(&mut enc, &mut octx)?;
    }
    enc.send_eof()?;
    drain(&mut enc, &mut octx)?;
    octx.write_trailer()
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = temp_path(path);
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes the synthetic dataset to `out` in UCF101's layout:
///
/// - `out/videos/<Class>/v_<Class>_gXX_cYY.avi` (H.264 in AVI);
/// - `out/splits/classInd.txt` (`1 MoveLeft`, 1-based);
/// - `out/splits/trainlist01.txt` (`MoveLeft/v_MoveLeft_g01_c01.avi 1`);
/// - `out/splits/testlist01.txt` (`MoveLeft/v_MoveLeft_g16_c01.avi`, no label).
///
/// Within each class, videos are numbered in split order and packed four clips to a
/// group; test groups come after the last training group, so, as in UCF101, the two
/// splits never share a group. Groups are bookkeeping only (clips of a group are not
/// related).
pub fn write_ucf101_layout(synth: &Synthetic, out: &Path, fps: u32) -> Result<Summary> {
    let classes = synth.num_classes();
    let videos_dir = out.join("videos");
    let splits_dir = out.join("splits");
    for dir in std::iter::once(&splits_dir)
        .cloned()
        .chain(CLASS_NAMES.iter().map(|c| videos_dir.join(c)))
    {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }

    // Training groups per class: enough for the largest class.
    let per_class = |split: Split| synth.len(split).div_ceil(classes);
    let train_groups = per_class(Split::Train).div_ceil(CLIPS_PER_GROUP);

    let mut written = 0;
    let mut lists = [String::new(), String::new()];
    for (split, first_group, list) in [(Split::Train, 1, 0), (Split::Test, train_groups + 1, 1)] {
        for index in 0..synth.len(split) {
            let label = synth.label(split, index)? as usize;
            let class = CLASS_NAMES[label];
            // Rank of this video within its class in this split (labels are `index % classes`).
            let rank = index / classes;
            let group = first_group + rank / CLIPS_PER_GROUP;
            let clip = rank % CLIPS_PER_GROUP + 1;
            let name = format!("v_{class}_g{group:02}_c{clip:02}.avi");
            let path = videos_dir.join(class).join(&name);
            write_video(&path, &synth.video(split, index)?, fps)?;
            written += 1;
            match split {
                Split::Train => lists[list].push_str(&format!("{class}/{name} {}\n", label + 1)),
                Split::Test => lists[list].push_str(&format!("{class}/{name}\n")),
            }
        }
    }

    let class_ind: String = CLASS_NAMES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {c}\n", i + 1))
        .collect();
    write_atomic(&splits_dir.join("classInd.txt"), &class_ind)?;
    write_atomic(&splits_dir.join("trainlist01.txt"), &lists[0])?;
    write_atomic(&splits_dir.join("testlist01.txt"), &lists[1])?;
    Ok(Summary {
        videos: written,
        classes,
    })
}
