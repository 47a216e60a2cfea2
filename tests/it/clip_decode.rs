//! Clip-only decoding (`data.clip_only`): the frames a partial decode delivers, from
//! the first packet or after a seek to a key frame, are bit-identical to the same
//! frames of a full decode, over B-frames, open GOPs, variable frame rate and several
//! containers; and the loader's batches are the same with it on or off.

use std::path::Path;
use std::sync::Arc;

use vssl::data::datasets::{self, VideoDataset};
use vssl::data::decode::{decode_selected, decode_video, scan_video};
use vssl::data::loader::{BatchPlan, HostBatch, Loader};
use vssl::data::sampler::StridedPlanner;
use vssl::data::Video;
use vssl::recipe::{DataConfig, DataKind};

use crate::common::ffmpeg_lavfi;

/// Writes `frames` frames of a moving, noisy test pattern with the ffmpeg CLI.
fn ffmpeg(path: &Path, frames: usize, filter: &str, args: &[&str]) {
    let src = format!("testsrc2=size=96x72:rate=25,noise=alls=12:allf=t{filter}");
    ffmpeg_lavfi(path, &src, frames, args);
}

/// (file name, extra filter, encoder arguments, whether a seek is expected, whether
/// unneeded non-reference frames are expected to be skipped).
type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    bool,
    bool,
);
const CASES: &[Case] = &[
    // ffmpeg's MPEG-4 part 2 defaults (GOP 12, no B-frames), as UCF101's XviD files.
    (
        "xvid.avi",
        "",
        &["-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "5"],
        true,
        false,
    ),
    // AVI with B-frames has no presentation timestamps: frame indices come from the
    // VOP types (`mpeg4_output_order`) and seeks go by dts.
    (
        "xvid_b.avi",
        "",
        &["-c:v", "mpeg4", "-vtag", "xvid", "-bf", "2", "-g", "12"],
        true,
        true,
    ),
    (
        "mpeg4_b.mp4",
        "",
        &["-c:v", "mpeg4", "-bf", "2", "-g", "12"],
        true,
        true,
    ),
    (
        "h264_b.mp4",
        "",
        &[
            "-c:v", "libx264", "-preset", "veryfast", "-g", "10", "-bf", "3", "-pix_fmt", "yuv420p",
        ],
        true,
        true,
    ),
    (
        "h264_open_gop.mkv",
        "",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-x264-params",
            "keyint=10:min-keyint=10:open-gop=1:bframes=3",
            "-pix_fmt",
            "yuv420p",
        ],
        true,
        true,
    ),
    // Variable frame rate: every third frame lasts three times as long.
    (
        "h264_vfr.mkv",
        ",setpts='(N+2*floor(N/3))/(25*TB)'",
        &[
            "-fps_mode",
            "vfr",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "8",
            "-pix_fmt",
            "yuv420p",
        ],
        true,
        true,
    ),
    (
        "vp9.webm",
        "",
        &[
            "-c:v",
            "libvpx-vp9",
            "-b:v",
            "300k",
            "-g",
            "10",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ],
        true,
        false,
    ),
    (
        "mjpeg.avi",
        "",
        &["-c:v", "mjpeg", "-q:v", "5"],
        true,
        false,
    ),
];

fn same_frames(full: &Video, part: &Video, wanted: &[usize]) -> bool {
    part.frames == wanted.len()
        && (part.height, part.width) == (full.height, full.width)
        && wanted
            .iter()
            .enumerate()
            .all(|(k, &i)| part.frame(k) == full.frame(i))
}

#[test]
fn clip_frames_are_bit_identical_to_a_full_decode() {
    let dir = tempfile::tempdir().unwrap();
    let n = 60;
    for &(name, filter, args, seeks, skips) in CASES {
        let path = dir.path().join(name);
        ffmpeg(&path, n, filter, args);
        let full = decode_video(&path, Some(40)).unwrap();
        assert_eq!(full.frames, n, "{name}");
        let scan = scan_video(&path).unwrap();
        assert_eq!(scan.packets, n, "{name}: packets");
        // Early, late, strided, single-frame, reversed-and-sorted and scattered picks.
        let picks: Vec<Vec<usize>> = vec![
            (0..16).collect(),
            (n - 16..n).collect(),
            (0..16).map(|i| 21 + 2 * i).collect(),
            vec![n - 1],
            vec![37],
            (0..8).map(|i| 5 + 7 * i).collect(),
            vec![1, 2, 3, 40, 41, 59],
        ];
        let (mut seeked, mut skipped) = (false, false);
        for (wanted, skip) in picks.iter().flat_map(|w| [(w, false), (w, true)]) {
            let sel = decode_selected(&path, Some(40), wanted, &scan, skip, false).unwrap();
            assert!(
                same_frames(&full, &sel.video, wanted),
                "{name}: frames {wanted:?} differ from the full decode (started at {}, skip {skip})",
                sel.started_at
            );
            assert!(sel.started_at <= wanted[0], "{name}");
            seeked |= sel.started_at > 0;
            // Frames left undecoded: fewer came out of the decoder than it ran over.
            let ran_over = wanted.last().unwrap() + 1 - sel.started_at;
            assert!(sel.decoded <= ran_over, "{name}");
            assert!(
                skip || sel.decoded == ran_over,
                "{name}: {wanted:?} without skipping"
            );
            skipped |= sel.decoded < ran_over;
            // The decode stops at the last frame asked for, unless that is the last one.
            if *wanted.last().unwrap() < n - 2 {
                assert_eq!(sel.total, None, "{name}: {wanted:?} decoded to the end");
            }
        }
        assert_eq!(seeked, seeks, "{name}: seek taken");
        assert_eq!(skipped, skips, "{name}: non-reference frames skipped");
    }
}

/// The run's scan memo hands back the file's own scan, once read, until the file
/// changes; past its budget it keeps nothing.
#[test]
fn the_scan_memo_keeps_one_scan_per_unchanged_file() {
    use vssl::data::scan_memo::ScanMemo;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.avi"));
    let h264: &[&str] = &[
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
    ];
    ffmpeg(&a, 30, "", h264);
    ffmpeg(&b, 20, "", &["-c:v", "mpeg4", "-vtag", "xvid", "-bf", "2"]);
    let memo = ScanMemo::new(1 << 20);
    let first = memo.scan(&a).unwrap();
    assert_eq!(*first, scan_video(&a).unwrap());
    assert!(
        std::sync::Arc::ptr_eq(&first, &memo.scan(&a).unwrap()),
        "memoised"
    );
    assert_eq!(*memo.scan(&b).unwrap(), scan_video(&b).unwrap());
    let (files, bytes) = memo.held();
    assert_eq!(files, 2);
    assert!(
        bytes >= 30 * 8 + 20 * 24,
        "{bytes} bytes for 30 pts and 20 dts entries"
    );
    // Rewritten with another length: scanned again, and the new scan kept.
    ffmpeg(&a, 45, "", h264);
    let again = memo.scan(&a).unwrap();
    assert_eq!((first.packets, again.packets), (30, 45));
    assert!(std::sync::Arc::ptr_eq(&again, &memo.scan(&a).unwrap()));
    assert_eq!(memo.held().0, 2);
    // A file that is gone is the scan's own error, not an old scan.
    std::fs::remove_file(&a).unwrap();
    let err = memo.scan(&a).unwrap_err().to_string();
    assert!(
        err.contains("a.mp4") && err.contains("no such file"),
        "{err}"
    );
    // A memo without room keeps nothing and still answers.
    let none = ScanMemo::new(0);
    let s = none.scan(&b).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&s, &none.scan(&b).unwrap()));
    assert_eq!(none.held(), (0, 0));
}

#[test]
fn mpeg4_frames_come_out_in_display_order() {
    use vssl::data::decode::mpeg4_output_order;
    // Decode order I P B B P B B: each B out at once, each anchor when the next arrives.
    assert_eq!(
        mpeg4_output_order(&[0, 1, 2, 2, 1, 2, 2]),
        [0, 3, 1, 2, 6, 4, 5]
    );
    // No B-frames: decode order is display order.
    assert_eq!(mpeg4_output_order(&[0, 1, 1, 0, 1]), [0, 1, 2, 3, 4]);
}

#[test]
fn loader_batches_are_the_same_with_clip_only_decoding_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    let mut list = String::new();
    for (i, &(name, filter, args, _, _)) in CASES.iter().enumerate() {
        let class = format!("c{}", i % 3);
        std::fs::create_dir_all(videos.join(&class)).unwrap();
        let path = videos.join(&class).join(name);
        ffmpeg(&path, 40 + 7 * i, filter, args);
        list.push_str(&format!("{},{}\n", path.display(), i % 3));
    }
    // A truncated file: its last packets are cut, so fewer frames decode than the
    // header promises and a plan on the packet count must be redone.
    let cut = videos.join("c0/cut.mp4");
    ffmpeg(
        &cut,
        80,
        "",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ],
    );
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
    list.push_str(&format!("{},0\n", cut.display()));
    let list_path = dir.path().join("train.csv");
    std::fs::write(&list_path, list).unwrap();
    let cfg = |clip_only| DataConfig {
        kind: DataKind::Csv,
        list: Some(list_path.clone()),
        frames: 8,
        size: 32,
        short_side: Some(36),
        clip_only,
        ..DataConfig::default()
    };
    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(2, 8, (1, 4))),
        size: 32,
        batch_size: 4,
        seed: 5,
        augment: Default::default(),
    };
    let batches = |clip_only| -> Vec<HostBatch> {
        let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(&cfg(clip_only)).unwrap());
        Loader::spawn(ds, plan.clone(), 0, 8, 2)
            .map(|b| b.unwrap())
            .collect()
    };
    let (full, part) = (batches(false), batches(true));
    assert_eq!(full.len(), 8);
    for (a, b) in full.iter().zip(&part) {
        assert_eq!(a.labels, b.labels, "step {}", a.step);
        assert_eq!(a.clip_meta, b.clip_meta, "step {}", a.step);
        assert_eq!(a.skipped, b.skipped, "step {}", a.step);
        assert!(
            a.data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {}: clip pixels differ",
            a.step
        );
    }
    assert_ne!(full[0].data, full[1].data);
}

#[test]
fn reduced_resolution_decoding_stays_close_to_the_full_resolution_path() {
    let dir = tempfile::tempdir().unwrap();
    // UCF101's geometry and codec: 320x240 MPEG-4 part 2 at about its bitrate.
    let path = dir.path().join("ucf.avi");
    ffmpeg_lavfi(
        &path,
        "testsrc2=size=320x240:rate=25",
        30,
        &["-c:v", "mpeg4", "-vtag", "xvid", "-b:v", "550k"],
    );
    use vssl::data::decode::decode_video_limited;
    for (short, reduced) in [
        (112, true),
        (128, true),
        (133, true),
        (134, false),
        (240, false),
    ] {
        let full = decode_video_limited(&path, Some(short), None, false).unwrap();
        let low = decode_video_limited(&path, Some(short), None, true).unwrap();
        assert_eq!(
            (low.frames, low.height, low.width),
            (full.frames, full.height, full.width),
            "short side {short}"
        );
        let mad = full
            .data
            .iter()
            .zip(&low.data)
            .map(|(&a, &b)| a.abs_diff(b) as f64)
            .sum::<f64>()
            / full.data.len() as f64;
        // 160x120 decodes serve shorter sides up to 133 (at most 11% upsampling);
        // beyond that the full-resolution frames are used unchanged.
        if reduced {
            assert!(
                mad > 0.0,
                "short side {short}: the reduced decode was not taken"
            );
            assert!(mad < 4.0, "short side {short}: mean abs diff {mad}"); // 1.9-2.3 measured
        } else {
            assert_eq!(mad, 0.0, "short side {short}");
        }
        println!("short side {short}: mean abs diff {mad:.2} levels");
    }
}
