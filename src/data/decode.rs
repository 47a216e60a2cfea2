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

/// The error for a problem with the video at `path`.
fn video_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Video {
        path: path.to_path_buf(),
        message,
    }
}

/// The next packet of stream `index`, `None` at the end. A demuxer resyncs past a
/// corrupt packet (counted in `corrupt`); a file made of them is an error. `read` (what
/// was read so far, for the message) names where a read error struck.
fn next_packet(
    ictx: &mut ffmpeg::format::context::Input,
    index: usize,
    corrupt: &mut usize,
    read: usize,
) -> std::result::Result<Option<ffmpeg::Packet>, String> {
    loop {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(ictx) {
            Ok(()) if packet.stream() == index => return Ok(Some(packet)),
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => return Ok(None),
            Err(ffmpeg::Error::InvalidData) => {
                *corrupt += 1;
                if *corrupt > 1000 {
                    return Err("too many corrupt packets".into());
                }
            }
            Err(e) => return Err(format!("read error after {read} frames: {e}")),
        }
    }
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
    decode_video_limited(path, short_side, None, false)
}

/// As [`decode_video`], but stops after the first `max_frames` frames (when given):
/// bounds the memory one decoded video takes whatever the file's length. With
/// `lowres`, decodes at the reduced resolution [`lowres_level`] picks (same output
/// size, close but not identical pixels).
pub fn decode_video_limited(
    path: &Path,
    short_side: Option<usize>,
    max_frames: Option<usize>,
    lowres: bool,
) -> Result<Video> {
    let fail = video_error(path);
    if short_side == Some(0) {
        return Err(fail("the requested shorter side must be at least 1".into()));
    }
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    init_ffmpeg();
    let want = Want {
        frames: None,
        max_frames: max_frames.unwrap_or(usize::MAX),
        scan: None,
        seek: None,
        skip: false,
        lowres,
    };
    decode_frames(path, short_side, want)
        .map(|d| d.video)
        .map_err(fail)
}

/// What a demux-only pass over a video's best video stream tells without decoding:
/// how many frames a decode should give, and where a decode may start.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamScan {
    /// Video packets read: the frame count a full decode gives for every cleanly
    /// demuxed file we have seen (one frame per packet), so clips can be planned
    /// before decoding.
    pub packets: usize,
    /// False when the demuxer met corrupt or partial packets (a truncated file): the
    /// packet count then says little about the frames, and only a full decode does.
    pub clean: bool,
    /// Key packets a decode may start from, as (frame index, pts), ascending; empty
    /// when this stream cannot be entered mid-way exactly (see [`scan_video`]).
    keys: Vec<(usize, i64)>,
    /// Every packet's pts, sorted: a frame's index is the rank of its pts.
    order: Vec<i64>,
    /// Without usable pts (MPEG-4 part 2 in AVI with B-frames): key packets as (frame
    /// index, dts), the index worked out from the VOP types in decode order (see
    /// [`mpeg4_output_order`]). After such a seek the first frame out must be the key
    /// frame and frames are counted on from there.
    dts_keys: Vec<(usize, i64)>,
    /// With `dts_keys`: every packet as (dts, frame index, VOP type), sorted by dts, so
    /// unused B-VOPs can be skipped and counted past.
    dts_index: Vec<(i64, usize, u8)>,
}

impl StreamScan {
    /// Heap bytes this scan holds (its per-packet tables), for memo budgets.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of_val;
        size_of_val(self.keys.as_slice())
            + size_of_val(self.order.as_slice())
            + size_of_val(self.dts_keys.as_slice())
            + size_of_val(self.dts_index.as_slice())
    }
}

/// Codecs whose key packets reset the decoder: frames from a key frame on decode
/// the same whether decoding started there or at the first packet. (H.264/HEVC key
/// packets are IDR or recovery-point pictures in the containers we read.)
fn restartable(id: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(
        id,
        Id::MPEG4
            | Id::MSMPEG4V1
            | Id::MSMPEG4V2
            | Id::MSMPEG4V3
            | Id::H263
            | Id::MJPEG
            | Id::MPEG1VIDEO
            | Id::MPEG2VIDEO
            | Id::H264
            | Id::HEVC
            | Id::VP8
            | Id::VP9
            | Id::AV1
    )
}

/// Reads every packet of the best video stream of `path` without decoding. Seeking
/// is offered only where frame indices can be recovered exactly after a seek: every
/// packet has a distinct pts (so a frame's index is its pts rank), the codec is
/// `restartable`, and the key packet's pts is known. AVI files without
/// presentation timestamps are always decoded from their first packet.
pub fn scan_video(path: &Path) -> Result<StreamScan> {
    scan_opened_by(path, open_for_scan)
}

type Opener = fn(&Path) -> std::result::Result<ffmpeg::format::context::Input, ffmpeg::Error>;

fn scan_opened_by(path: &Path, open: Opener) -> Result<StreamScan> {
    let fail = video_error(path);
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    init_ffmpeg();
    use ffmpeg::media;
    let mut ictx = open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let (index, id) = {
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| fail("no video stream".into()))?;
        (stream.index(), stream.parameters().id())
    };
    let mut packets = 0usize;
    let mut pts: Vec<Option<i64>> = Vec::new();
    let mut keys: Vec<Option<i64>> = Vec::new();
    let mut corrupt = 0usize;
    // MPEG-4 part 2: each packet's VOP type (None: not exactly one VOP), key, dts.
    let mut vops: Vec<(Option<u8>, bool, Option<i64>)> = Vec::new();
    while let Some(packet) = next_packet(&mut ictx, index, &mut corrupt, packets).map_err(&fail)? {
        if packet.is_corrupt() || packet.size() == 0 {
            corrupt += 1;
        }
        if packet.is_key() {
            keys.push(packet.pts());
        }
        if id == ffmpeg::codec::Id::MPEG4 {
            vops.push((
                packet.data().and_then(single_vop_type),
                packet.is_key(),
                packet.dts(),
            ));
        }
        pts.push(packet.pts());
        packets += 1;
    }
    let mut order: Vec<i64> = pts.iter().flatten().copied().collect();
    order.sort_unstable();
    order.dedup();
    let exact = restartable(id) && corrupt == 0 && order.len() == packets;
    let keys = if exact {
        keys.into_iter()
            .filter_map(|p| Some((order.binary_search(&p?).ok()?, p?)))
            .collect()
    } else {
        order.clear();
        Vec::new()
    };
    let (dts_keys, dts_index) = if !exact && corrupt == 0 && vops.len() == packets {
        mpeg4_dts_keys(&vops)
    } else {
        Default::default()
    };
    Ok(StreamScan {
        packets,
        clean: corrupt == 0,
        keys,
        order,
        dts_keys,
        dts_index,
    })
}

/// Opens `path` to read its packets (the scan), without `avformat_find_stream_info`
/// where the container's header already settles what the scan needs: one video stream
/// (so it is the one the decode's `best` picks) with a known codec, and no streams left
/// for probing to find. Probing decodes frames to fill in parameters the scan never
/// reads (pixel format, reorder depth); it costs more than the packet scan itself on MP4
/// (about 1.2 ms per H.264 video at 640x360). Packets, their flags and timestamps come
/// from the demuxer either way. Anything else is probed as `format::input` does.
fn open_for_scan(
    path: &Path,
) -> std::result::Result<ffmpeg::format::context::Input, ffmpeg::Error> {
    use ffmpeg::ffi;
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path
        .to_str()
        .ok_or(ffmpeg::Error::InvalidData)?
        .as_bytes()
        .to_vec();
    let name = std::ffi::CString::new(bytes).map_err(|_| ffmpeg::Error::InvalidData)?;
    // SAFETY: the FFI contract of avformat_open_input / find_stream_info / close_input:
    // `ps` is null or an open context owned here until it is wrapped (which closes it on
    // drop); `streams` holds `nb_streams` valid stream pointers with their codecpar.
    unsafe {
        let mut ps = std::ptr::null_mut();
        let r = ffi::avformat_open_input(
            &mut ps,
            name.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
        );
        if r < 0 {
            return Err(ffmpeg::Error::from(r));
        }
        let f = &*ps;
        let streams: &[*mut ffi::AVStream] = if f.nb_streams == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(f.streams, f.nb_streams as usize)
        };
        let kind = |s: &*mut ffi::AVStream| &*(**s).codecpar;
        let videos = streams
            .iter()
            .filter(|s| kind(s).codec_type == ffi::AVMediaType::AVMEDIA_TYPE_VIDEO)
            .count();
        let settled = i64::from(f.ctx_flags) & i64::from(ffi::AVFMTCTX_NOHEADER) == 0
            && videos == 1
            && streams.iter().all(|s| {
                let p = kind(s);
                p.codec_type != ffi::AVMediaType::AVMEDIA_TYPE_UNKNOWN
                    && p.codec_id != ffi::AVCodecID::AV_CODEC_ID_NONE
            });
        if !settled {
            let r = ffi::avformat_find_stream_info(ps, std::ptr::null_mut());
            if r < 0 {
                ffi::avformat_close_input(&mut ps);
                return Err(ffmpeg::Error::from(r));
            }
        }
        Ok(ffmpeg::format::context::Input::wrap(ps))
    }
}

/// The coding type (0 I, 1 P, 2 B, 3 S) of the one MPEG-4 part 2 VOP in `data`, or
/// `None` when it holds none or several (DivX "packed" B-frames) or is too short to be
/// a coded VOP (a placeholder N-VOP).
fn single_vop_type(data: &[u8]) -> Option<u8> {
    // The scan reads every byte of every packet: a vectorised search for the start
    // code instead of a byte loop.
    let mut vops = memchr::memmem::find_iter(data, &[0, 0, 1, 0xb6])
        .filter_map(|i| data.get(i + 4).map(|b| b >> 6));
    let found = vops.next();
    if vops.next().is_some() {
        return None;
    }
    found.filter(|_| data.len() >= 16)
}

/// Frame index (output order) of each packet of an MPEG-4 part 2 stream from its VOP
/// types in decode order: the decoder hands out a B-VOP as soon as it is decoded and
/// an I/P/S-VOP when the next one of those arrives (or at the end).
pub fn mpeg4_output_order(types: &[u8]) -> Vec<usize> {
    let mut index = vec![0; types.len()];
    let (mut next, mut pending) = (0, None);
    for (j, &t) in types.iter().enumerate() {
        if t == 2 {
            index[j] = next;
            next += 1;
        } else {
            if let Some(p) = pending {
                index[p] = next;
                next += 1;
            }
            pending = Some(j);
        }
    }
    if let Some(p) = pending {
        index[p] = next;
    }
    index
}

/// Key I-VOP packets as (frame index, dts), and every packet as (dts, frame index,
/// type) sorted by dts, for a stream whose every packet is one VOP with a distinct dts;
/// both empty otherwise.
type DtsTables = (Vec<(usize, i64)>, Vec<(i64, usize, u8)>);
fn mpeg4_dts_keys(vops: &[(Option<u8>, bool, Option<i64>)]) -> DtsTables {
    let Some(types) = vops.iter().map(|v| v.0).collect::<Option<Vec<u8>>>() else {
        return Default::default();
    };
    let Some(dts) = vops.iter().map(|v| v.2).collect::<Option<Vec<i64>>>() else {
        return Default::default();
    };
    let index = mpeg4_output_order(&types);
    let mut table: Vec<(i64, usize, u8)> = (0..vops.len())
        .map(|j| (dts[j], index[j], types[j]))
        .collect();
    table.sort_unstable();
    if table.windows(2).any(|w| w[0].0 == w[1].0) {
        return Default::default();
    }
    let keys = vops
        .iter()
        .enumerate()
        .filter(|(_, v)| v.1 && v.0 == Some(0))
        .map(|(j, _)| (index[j], dts[j]))
        .collect();
    (keys, table)
}

/// The frames of one video that clips need, decoded as [`decode_video`] would decode
/// them (bit-identical), and nothing past the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    /// The frames asked for, in the order asked for (fewer when the video ended first).
    pub video: Video,
    /// Frames the video has, when the decode ran to its end (`None`: it stopped early).
    pub total: Option<usize>,
    /// Index of the frame decoding started at: 0, or the key frame it seeked to.
    pub started_at: usize,
    /// Frames the decoder produced (kept or not; skipped frames are not produced).
    pub decoded: usize,
}

/// Decodes frames `wanted` (sorted, distinct indices in decode order) of `path`: from
/// the last key packet at or before the first of them when `scan` allows it, else from
/// the first packet, and stops once the last one is converted. Frames not asked for
/// are decoded but never converted or copied.
pub fn decode_selected(
    path: &Path,
    short_side: Option<usize>,
    wanted: &[usize],
    scan: &StreamScan,
    skip_unused: bool,
    lowres: bool,
) -> Result<Selected> {
    let fail = video_error(path);
    if short_side == Some(0) {
        return Err(fail("the requested shorter side must be at least 1".into()));
    }
    if wanted.is_empty() || wanted.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Internal(format!(
            "{}: frames to decode must be sorted, distinct and at least one",
            path.display()
        )));
    }
    init_ffmpeg();
    let key = scan
        .keys
        .iter()
        .rev()
        .find(|(f, _)| *f > 0 && *f <= wanted[0]);
    let dts_key = scan
        .dts_keys
        .iter()
        .rev()
        .find(|(f, _)| *f > 0 && *f <= wanted[0]);
    let mut want = Want {
        frames: Some(wanted),
        max_frames: usize::MAX,
        scan: Some(scan),
        seek: key
            .map(|&(_, pts)| Seek::Pts(pts))
            .or(dts_key.map(|&(_, dts)| Seek::Dts(dts))),
        skip: skip_unused && (!scan.order.is_empty() || !scan.dts_index.is_empty()),
        lowres,
    };
    let got = match decode_frames(path, short_side, want) {
        Err(e) if e == RESTART => {
            tracing::debug!(
                "{}: seek or skip not exact, decoding from the start",
                path.display()
            );
            want.seek = None;
            want.skip = false;
            decode_frames(path, short_side, want)
        }
        other => other,
    };
    let d = got.map_err(fail)?;
    Ok(Selected {
        video: d.video,
        total: d.reached_end.then_some(d.frames),
        started_at: d.started_at,
        decoded: d.received,
    })
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

/// Which frames of a decode to keep, and where the decode may start.
#[derive(Clone, Copy)]
struct Want<'a> {
    /// Frame indices to keep (sorted, distinct); `None` keeps every frame.
    frames: Option<&'a [usize]>,
    /// Stop after this many frames (full decodes).
    max_frames: usize,
    /// What the demux pass found: which frame each key packet, pts or dts is (needed
    /// by `seek` and `skip`).
    scan: Option<&'a StreamScan>,
    /// Where to start instead of the first packet.
    seek: Option<Seek>,
    /// Skip decoding the non-reference frames that are not wanted (the scan says which
    /// frame each packet is).
    skip: bool,
    /// Decode at reduced resolution where the codec allows it ([`lowres_level`]).
    lowres: bool,
}

/// A key packet to start decoding at, by the timestamp the scan identifies it with.
#[derive(Clone, Copy)]
enum Seek {
    /// A key of `StreamScan::keys`: frames are indexed by pts rank from there.
    Pts(i64),
    /// A key of `StreamScan::dts_keys`: frames are counted on from there.
    Dts(i64),
}

/// What one decode pass gave.
struct Decoded {
    /// The frames kept.
    video: Video,
    /// Index of the next frame after the last one handed out.
    frames: usize,
    reached_end: bool,
    /// Index of the frame decoding started at (0 or a key frame).
    started_at: usize,
    /// Frames received from the decoder.
    received: usize,
}

/// Width and height the stream's parameters declare (0 when unknown).
fn params_dims(params: &ffmpeg::codec::Parameters) -> (usize, usize) {
    // SAFETY: `params` wraps a valid AVCodecParameters.
    let p = unsafe { &*params.as_ptr() };
    (p.width.max(0) as usize, p.height.max(0) as usize)
}

/// The reduced-resolution level (`lowres`: each side divided by 2^level) to decode a
/// `w`x`h` stream of codec `id` at when frames are resized to shorter side `short`:
/// the largest the codec supports whose shorter side is still at least 90% of the
/// target (at most an 11% upsampling, below what a training crop's scale jitter does),
/// and 0 when the codec has none or the size is unknown.
pub fn lowres_level(id: ffmpeg::codec::Id, w: usize, h: usize, short: Option<usize>) -> u8 {
    let (Some(short), true) = (short, w > 0 && h > 0) else {
        return 0;
    };
    let max = ffmpeg::codec::decoder::find(id)
        // SAFETY: a registered, immutable codec descriptor.
        .map_or(0, |c| unsafe { (*c.as_ptr()).max_lowres });
    let src = w.min(h);
    (1..=max)
        .take_while(|&l| {
            let reduced = src.div_ceil(1 << l);
            10 * reduced >= 9 * short
        })
        .last()
        .unwrap_or(0)
}

/// Why a decode that started at a key packet gave up (the caller decodes from the
/// start instead, which is always exact).
const RESTART: &str = "\u{0}restart";

fn decode_frames(
    path: &Path,
    short_side: Option<usize>,
    want: Want<'_>,
) -> std::result::Result<Decoded, String> {
    use ffmpeg::{format, media};
    let mut ictx = format::input(path).map_err(|e| format!("cannot open: {e}"))?;
    let (index, params) = {
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or("no video stream")?;
        (stream.index(), stream.parameters())
    };
    let ((src_w, src_h), id) = (params_dims(&params), params.id());
    let level = if want.lowres {
        lowres_level(id, src_w, src_h, short_side)
    } else {
        0
    };
    // One decoding thread per video: the loader parallelises across videos, and the
    // benchmark compares against `ffmpeg -threads 1`.
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(params)
        .and_then(|mut c| {
            c.set_threading(ffmpeg::codec::threading::Config::count(1));
            if level > 0 {
                // SAFETY: a codec context not yet opened; `lowres` is read at open.
                unsafe { (*c.as_mut_ptr()).lowres = level as i32 };
            }
            c.decoder().video()
        })
        .map_err(|e| format!("cannot open the video decoder: {e}"))?;
    if let Some(Seek::Pts(ts) | Seek::Dts(ts)) = want.seek {
        // SAFETY: `ictx` is an open input context and `index` one of its streams.
        let ret = unsafe {
            ffmpeg::ffi::av_seek_frame(
                ictx.as_mut_ptr(),
                index as i32,
                ts,
                ffmpeg::ffi::AVSEEK_FLAG_BACKWARD,
            )
        };
        if ret < 0 {
            return Err(RESTART.into());
        }
    }

    let mut out = FrameSink {
        short_side,
        dims: None,
        conv: None,
        decoded: ffmpeg::frame::Video::empty(),
        rgb: ffmpeg::frame::Video::empty(),
        data: crate::data::spare_buffer(),
        frames: 0,
        kept: 0,
        want: want.frames,
        order: None,
        gaps: false,
        counted_from: None,
        skipped: Default::default(),
        received: 0,
    };
    if level > 0 {
        // The output size is the full-resolution frame's, whatever size decodes.
        out.dims = Some(resized_dims(src_w, src_h, short_side));
    }
    let mut landed = want.seek.is_none();
    let skip = want.skip.then_some(want.scan).flatten();
    if let Some(scan) = skip {
        out.gaps = true;
        if scan.order.is_empty() {
            // Counted from the start (or the dts seek), past the B-frames skipped.
            out.counted_from.get_or_insert(0);
        } else if out.order.is_none() {
            out.order = Some((0, scan.order.as_slice()));
        }
    }
    let done = |out: &FrameSink| match want.frames {
        Some(f) => out.kept >= f.len(),
        None => out.frames >= want.max_frames,
    };
    let mut corrupt = 0usize;
    let mut reached_end = false;
    loop {
        let Some(packet) = next_packet(&mut ictx, index, &mut corrupt, out.frames)? else {
            reached_end = true;
            break;
        };
        // A seek must land on a key packet the scan knows, at or before the first
        // frame wanted; its frame index is where counting starts.
        if let (false, Some(seek), Some(scan)) = (landed, want.seek, want.scan) {
            let first = want.frames.and_then(|f| f.first()).copied().unwrap_or(0);
            let (keys, stamp) = match seek {
                Seek::Pts(_) => (&scan.keys, packet.pts()),
                Seek::Dts(_) => (&scan.dts_keys, packet.dts()),
            };
            let key = keys
                .iter()
                .find(|k| packet.is_key() && Some(k.1) == stamp && k.0 <= first)
                .ok_or(RESTART)?;
            out.frames = key.0;
            match seek {
                Seek::Pts(_) => out.order = Some((key.0, scan.order.as_slice())),
                Seek::Dts(_) => out.counted_from = Some(key.0),
            }
            landed = true;
        }
        if let (Some(scan), Some(wanted)) = (skip, want.frames) {
            // Decided per packet: a frame no clip shows may go undecoded if nothing
            // references it (the decoder knows which; a reference frame is decoded).
            // Without pts, only B-VOPs (never references) are skipped, and their frame
            // indices are noted so the count runs past them.
            let unused = if scan.order.is_empty() {
                let entry = packet.dts().and_then(|d| {
                    let k = scan.dts_index.binary_search_by_key(&d, |e| e.0).ok()?;
                    Some(scan.dts_index[k])
                });
                match entry {
                    Some((_, i, 2)) if wanted.binary_search(&i).is_err() => {
                        out.skipped.insert(i);
                        true
                    }
                    _ => false,
                }
            } else {
                let rank = packet.pts().and_then(|p| scan.order.binary_search(&p).ok());
                rank.is_some_and(|r| wanted.binary_search(&r).is_err())
            };
            decoder.skip_frame(if unused {
                ffmpeg::codec::discard::Discard::NonReference
            } else {
                ffmpeg::codec::discard::Discard::Default
            });
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
        if done(&out) {
            break;
        }
    }
    // Flush the frames the decoder still holds.
    if reached_end && decoder.send_eof().is_ok() {
        out.drain(&mut decoder)?;
    }
    // With frames skipped, the end of the stream does not tell how many frames a full
    // decode gives, and a wanted frame the decoder dropped shows only here.
    if out.gaps && (reached_end || want.frames.is_some_and(|f| out.kept < f.len())) {
        return Err(RESTART.into());
    }
    // A decoder may hand out several frames per packet: keep exactly the first `max_frames`.
    if want.frames.is_none() && out.frames > want.max_frames {
        if let Some((w, h)) = out.dims {
            out.data.truncate(want.max_frames * w * h * 3);
        }
        out.frames = want.max_frames;
    }
    let Some((w, h)) = out.dims else {
        return Err("no decodable video frame".into());
    };
    let kept = match want.frames {
        Some(_) => out.kept,
        None => out.frames,
    };
    let started_at = out
        .order
        .map(|(first, _)| first)
        .or(out.counted_from)
        .unwrap_or(0);
    Ok(Decoded {
        video: Video {
            frames: kept,
            height: h,
            width: w,
            data: out.data,
        },
        frames: out.frames,
        reached_end,
        started_at,
        received: out.received,
    })
}

/// Accumulates decoded frames as RGB24 at a fixed output size.
struct FrameSink<'a> {
    short_side: Option<usize>,
    /// Output (width, height), fixed by the first decoded frame.
    dims: Option<(usize, usize)>,
    conv: Option<Converter>,
    /// Decoder output and RGB frames, reused for every frame (no allocation per frame).
    decoded: ffmpeg::frame::Video,
    rgb: ffmpeg::frame::Video,
    data: Vec<u8>,
    /// Index of the next frame the decoder hands out, counted from the video's start.
    frames: usize,
    /// Frames kept so far.
    kept: usize,
    /// Frames to keep (sorted); `None`: all.
    want: Option<&'a [usize]>,
    /// After a seek: the key frame's index and every packet's pts, sorted.
    order: Option<(usize, &'a [i64])>,
    /// Frames may be missing (skipped): indices may jump forward, never back.
    gaps: bool,
    /// After a seek by dts: the key frame's index; the first frame out must be it.
    counted_from: Option<usize>,
    /// Frame indices whose B-VOPs were skipped (counted mode): no frame comes out for them.
    skipped: std::collections::BTreeSet<usize>,
    /// Frames received from the decoder.
    received: usize,
}

impl FrameSink<'_> {
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
        self.received += 1;
        // The decoder drops the B-frames that lead a key frame after a seek (they need
        // the frame before it); anything else first means the indices are off.
        if self.counted_from.is_some_and(|f| f > 0) && self.received == 1 && !self.decoded.is_key()
        {
            return Err(RESTART.into());
        }
        while self.skipped.remove(&self.frames) {
            self.frames += 1;
        }
        if let Some((first, order)) = self.order {
            // After a seek a frame's index is the rank of its pts. Leading frames shown
            // before the key frame (open GOPs) are dropped; after that, indices must run
            // on without a gap, or the decode restarts from the first packet.
            let rank = self
                .decoded
                .pts()
                .and_then(|p| order.binary_search(&p).ok())
                .ok_or(RESTART)?;
            if self.frames == first && self.kept == 0 && rank < first {
                return Ok(());
            }
            if rank != self.frames && !(self.gaps && rank > self.frames) {
                return Err(RESTART.into());
            }
            self.frames = rank;
        }
        let index = self.frames;
        self.frames += 1;
        let keep = match self.want {
            Some(f) => f.get(self.kept) == Some(&index),
            None => true,
        };
        let frame = &self.decoded;
        let (sw, sh) = (frame.width(), frame.height());
        if sw == 0 || sh == 0 {
            return Err("decoded frame has no pixels".into());
        }
        let (w, h) = *self
            .dims
            .get_or_insert_with(|| resized_dims(sw as usize, sh as usize, self.short_side));
        if !keep {
            return Ok(());
        }
        let src = (frame.format(), sw, sh);
        if self.conv.as_ref().is_none_or(|c| c.src != src) {
            let conv = Converter::new(src, w as u32, h as u32)
                .map_err(|e| format!("cannot convert {:?} {sw}x{sh} frames to RGB: {e}", src.0))?;
            self.conv = Some(conv);
        }
        let conv = self.conv.as_mut().expect("converter set above");
        let rgb = &mut self.rgb;
        conv.run(frame, rgb)
            .map_err(|e| format!("cannot convert frame {index}: {e}"))?;
        let row = w * 3;
        let stride = rgb.stride(0);
        let plane = rgb.data(0);
        if stride < row || plane.len() < stride * (h - 1) + row {
            return Err(format!("frame {index}: unexpected RGB plane layout"));
        }
        self.data.reserve(row * h);
        for y in 0..h {
            self.data
                .extend_from_slice(&plane[y * stride..y * stride + row]);
        }
        self.kept += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_holding_one_vop_gives_its_type() {
        let vop = |t: u8| [0u8, 0, 1, 0xb6, t << 6, 9];
        let pad = [0x55u8; 12];
        let one = [&pad[..], &vop(2)].concat();
        assert_eq!(single_vop_type(&one), Some(2));
        assert_eq!(single_vop_type(&[&vop(1)[..], &pad].concat()), Some(1));
        // DivX packed bitstream: a P- and a B-VOP in one packet.
        assert_eq!(
            single_vop_type(&[&vop(1)[..], &pad, &vop(2)].concat()),
            None
        );
        // A start code with no type byte after it is not a VOP.
        assert_eq!(
            single_vop_type(&[&pad[..], &pad, &[0, 0, 1, 0xb6]].concat()),
            None
        );
        // Too short to be a coded VOP (an N-VOP placeholder), or no VOP at all.
        assert_eq!(single_vop_type(&vop(1)), None);
        assert_eq!(single_vop_type(&[pad, pad].concat()), None);
    }

    /// Writes a test video with the ffmpeg CLI (`args` after the lavfi input).
    fn write(path: &Path, args: &[&str]) {
        let out = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=64x48:rate=25,noise=alls=8:allf=t")
            .args(["-frames:v", "40"])
            .args(args)
            .arg(path)
            .output()
            .expect("the ffmpeg CLI runs (tools/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The scan's header-only open finds the same packets, keys and timestamps as a
    /// probed open (`format::input`), in containers where it skips probing and in those
    /// where it must probe (MPEG-TS finds its streams by reading; two video streams).
    #[test]
    fn the_scan_without_probing_equals_the_probed_scan() {
        let dir = std::env::temp_dir().join(format!("vssl-scan-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h264 = [
            "-c:v", "libx264", "-preset", "veryfast", "-g", "10", "-pix_fmt", "yuv420p",
        ];
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("xvid.avi", vec!["-c:v", "mpeg4", "-vtag", "xvid"]),
            (
                "xvid_b.avi",
                vec!["-c:v", "mpeg4", "-vtag", "xvid", "-bf", "2"],
            ),
            ("h264.mp4", h264.to_vec()),
            ("h264.ts", h264.to_vec()),
            ("vp8.webm", vec!["-c:v", "libvpx", "-b:v", "300k"]),
            ("mjpeg.mkv", vec!["-c:v", "mjpeg"]),
            (
                "two_videos.mkv",
                [&h264[..], &["-map", "0:v", "-map", "0:v"]].concat(),
            ),
        ];
        for (name, args) in &cases {
            let path = dir.join(name);
            write(&path, args);
            let probed = scan_opened_by(&path, ffmpeg::format::input::<Path>).unwrap();
            let bare = scan_video(&path).unwrap();
            assert_eq!(bare, probed, "{name}");
            assert_eq!(bare.packets, 40, "{name}");
            assert!(bare.clean, "{name}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
