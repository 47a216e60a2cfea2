//! `vssl import` (PyTorch checkpoints), `vssl extract` (pooled features), video
//! decoding and `vssl recipe --summary`. The `.pth` fixtures come from
//! `tools/torch_fixtures.py` (a torch-free copy lives in `tests/fixtures/`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vssl::backbone::extract::{self, ExtractOptions};
use vssl::backbone::import::BackboneArgs;
use vssl::data::Video;
use vssl::train::checkpoint::{read_safetensors, write_safetensors_atomic};

use super::common::{repo, run, stderr, tiny_recipe, vssl};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    f64s(a)
        .iter()
        .zip(f64s(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The fixture's tensors as candle's pickle reader sees them, `module.` stripped.
fn pth_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("module.").unwrap_or(&k).to_string(), t))
        .collect()
}

fn read(path: &Path) -> (BTreeMap<String, Tensor>, HashMap<String, String>) {
    read_safetensors(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `vssl import <fixture> --arch r3d_small --set backbone.widths=[2,2,2,2] --out <out>`.
fn import_tiny(pth: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "import",
        s(pth),
        "--arch",
        "r3d_small",
        "--set",
        "backbone.widths=[2,2,2,2]",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&mut vssl(&args))
}

fn assert_same_tensors(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.dtype(), w.dtype(), "{k}");
        assert_eq!(g.dims(), w.dims(), "{k}");
        assert_eq!(f64s(g), f64s(w), "{k} differs");
    }
}

#[test]
fn import_round_trips_a_wrapped_state_dict() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state.pth"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = pth_tensors(&fixture("tiny_state.pth"));
    assert_eq!(want.len(), 72);
    assert_eq!(
        want["layer1.0.conv1.1.num_batches_tracked"].dtype(),
        DType::I64
    );
    let (got, meta) = read(&out);
    assert_same_tensors(&got, &want);
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["arch"], "r3d_small");
    assert!(meta["source"].ends_with("tiny_state.pth"), "{meta:?}");
    let err = stderr(&o);
    assert!(
        err.contains("applied 72; missing: none; unused: none"),
        "{err}"
    );
}

#[test]
fn import_takes_the_backbone_from_a_recipe_and_unwraps_model() {
    let d = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(d.path(), "[backbone]\nwidths = [2, 2, 2, 2]");
    let out = d.path().join("tiny.safetensors");
    let o = run(&mut vssl(&[
        "import",
        s(&fixture("tiny_state_model.pth")),
        "--recipe",
        s(&recipe),
        "--out",
        s(&out),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (got, meta) = read(&out);
    assert_same_tensors(&got, &pth_tensors(&fixture("tiny_state.pth")));
    assert_eq!(meta["arch"], "r3d_small");
    // The tiny recipe builds for 4 frames; recorded for `extract`.
    assert_eq!(meta["frames"], "4");
}

#[test]
fn import_reports_unused_keys_without_failing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state_extra.pth"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("unused: extra_head.weight"), "{err}");
    let (got, _) = read(&out);
    assert!(!got.contains_key("extra_head.weight"));
    assert_eq!(got.len(), 72);
}

#[test]
fn import_rejects_a_wrong_shape_naming_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state_badshape.pth"), &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("layer3.0.conv1.0.weight"), "{err}");
    assert!(err.contains("tiny_state_badshape.pth"), "{err}");
    assert!(!out.exists(), "nothing is written on error");
}

#[test]
fn import_rejects_files_that_are_not_pth_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o.safetensors");
    let bogus = d.path().join("notes.pth");
    std::fs::write(&bogus, "these are not the weights you are looking for\n").unwrap();
    for input in [bogus.clone(), d.path().join("absent.pth")] {
        let o = import_tiny(&input, &out, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(s(&input)), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A valid safetensors file is not a .pth either.
    let st = d.path().join("w.pth");
    write_safetensors_atomic(
        &st,
        &[(
            "x".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )],
        &HashMap::new(),
    )
    .unwrap();
    let o = import_tiny(&st, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(s(&st)), "{}", stderr(&o));
    // An unknown architecture is bad input too.
    let o = run(&mut vssl(&[
        "import",
        s(&fixture("tiny_state.pth")),
        "--arch",
        "r4d_99",
        "--out",
        s(&out),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("r3d_18"), "{}", stderr(&o));
}

#[test]
fn import_fails_on_missing_tensors_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tiny.safetensors");
    // Two blocks in layer1: the file has no layer1.1.*.
    let deeper = ["--set", "backbone.layers=[2,1,1,1]"];
    let o = import_tiny(&fixture("tiny_state.pth"), &out, &deeper);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("layer1.1.conv1.0.weight"), "{err}");
    assert!(err.contains("--allow-missing"), "{err}");
    assert!(!out.exists());

    let mut args = deeper.to_vec();
    args.push("--allow-missing");
    let o = import_tiny(&fixture("tiny_state.pth"), &out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("missing: layer1.1.conv1.0.weight"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read(&out).0.len(), 72 + 12);
}

#[test]
fn extract_from_clips_matches_in_process_pooled_features() {
    let d = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(d.path(), "");
    let run_dir = d.path().join("run");
    let o = run(&mut vssl(&[
        "train",
        s(&recipe),
        "--out",
        s(&run_dir),
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = run_dir.join("model.safetensors");

    let clips = Tensor::randn(0f32, 1f32, (3, 3, 4, 16, 16), &Device::Cpu).unwrap();
    let clips_path = d.path().join("clips.safetensors");
    write_safetensors_atomic(
        &clips_path,
        &[("clips".into(), clips.clone())],
        &HashMap::new(),
    )
    .unwrap();
    let out = d.path().join("features.safetensors");
    // No --arch: the architecture comes from the recipe stored in the weights.
    let o = run(&mut vssl(&[
        "extract",
        "--weights",
        s(&weights),
        "--input",
        s(&clips_path),
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (got, meta) = read(&out);
    let feats = &got["features"];
    assert_eq!(feats.dims(), &[3, 8]); // tiny recipe: widths [4, 8, 8, 8]

    // In process: the recipe's backbone with the trained weights.
    let r = vssl::recipe::load(&vssl::recipe::RecipeSource::file(&recipe)).unwrap();
    let net =
        vssl::registry::backbone(&r.backbone, r.data.frames, r.train.seed, &Device::Cpu).unwrap();
    let (tensors, _) = read(&weights);
    let own: BTreeMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pretext."))
        .collect();
    let rep = net.vars().load(&own).unwrap();
    assert!(rep.missing.is_empty());
    let want = net.pooled(&clips, false).unwrap();
    let diff = max_abs_diff(feats, &want);
    assert!(diff < 1e-5, "max diff {diff}");

    let names: Vec<String> = serde_json::from_str(&meta["names"]).unwrap();
    assert_eq!(
        names,
        [
            "clips.safetensors[0]",
            "clips.safetensors[1]",
            "clips.safetensors[2]"
        ]
    );
    assert_eq!(meta["arch"], "r3d_small");
    assert_eq!(meta["weights"], s(&weights));
    assert_eq!(meta["skipped"], "[]");
}

#[test]
fn imported_weights_compute_pytorchs_features() {
    let d = tempfile::tempdir().unwrap();
    let weights = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state.pth"), &weights, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("features.safetensors");
    let o = run(&mut vssl(&[
        "extract",
        "--weights",
        s(&weights),
        "--input",
        s(&fixture("tiny_io.safetensors")),
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (torch, _) = read(&fixture("tiny_io.safetensors"));
    let (got, _) = read(&out);
    let diff = max_abs_diff(&got["features"], &torch["features"]);
    assert!(diff < 1e-4, "max diff to PyTorch {diff}");
}

/// A smooth moving pattern (compresses well) of `frames` frames of `h`x`w`.
fn pattern(frames: usize, h: usize, w: usize, shift: usize) -> Video {
    let mut data = Vec::with_capacity(frames * h * w * 3);
    for t in 0..frames {
        for y in 0..h {
            for x in 0..w {
                data.push(((x + t + shift) * 6).min(255) as u8);
                data.push((y * 8 + shift).min(255) as u8);
                data.push((60 + t * 12 + shift).min(255) as u8);
            }
        }
    }
    Video {
        frames,
        height: h,
        width: w,
        data,
    }
}

#[test]
fn extract_from_a_directory_skips_unreadable_videos() {
    let d = tempfile::tempdir().unwrap();
    let weights = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state.pth"), &weights, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let videos = d.path().join("videos");
    std::fs::create_dir(&videos).unwrap();
    vssl::data::encode::write_video(&videos.join("a.mp4"), &pattern(10, 24, 32, 0), 25).unwrap();
    vssl::data::encode::write_video(&videos.join("b.avi"), &pattern(12, 24, 32, 7), 25).unwrap();
    std::fs::write(videos.join("c.mkv"), b"\x1aE\xdf\xa3 not really matroska").unwrap();

    let out = d.path().join("features.safetensors");
    let o = run(&mut vssl(&[
        "extract",
        "--weights",
        s(&weights),
        "--input",
        s(&videos),
        "--output",
        s(&out),
        "--frames",
        "4",
        "--size",
        "16",
        "--clips",
        "2",
        "--stride",
        "2",
        "--device",
        "cpu",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (got, meta) = read(&out);
    let feats = &got["features"];
    assert_eq!(feats.dims(), &[2, 2]);
    let names: Vec<String> = serde_json::from_str(&meta["names"]).unwrap();
    assert_eq!(names, ["a.mp4", "b.avi"]);
    let skipped: Vec<String> = serde_json::from_str(&meta["skipped"]).unwrap();
    assert_eq!(skipped, ["c.mkv"]);
    assert_eq!(meta["clips"], "2");

    // Row 0 equals the in-process computation for a.mp4.
    let (net, _) =
        extract::load_backbone(&weights, &BackboneArgs::default(), 4, &Device::Cpu).unwrap();
    let opts = ExtractOptions {
        weights: weights.clone(),
        input: videos.join("a.mp4"),
        output: d.path().join("unused"),
        backbone: BackboneArgs::default(),
        frames: 4,
        size: 16,
        clips: 2,
        stride: 2,
        batch: 8,
    };
    let video = vssl::data::decode::decode_video(&opts.input, Some(16)).unwrap();
    let want = extract::video_features(net.as_ref(), &video, &opts, &Device::Cpu).unwrap();
    let diff = max_abs_diff(&feats.get(0).unwrap(), &want);
    assert!(diff < 1e-5, "max diff {diff}");

    // A single unreadable video is an error naming it (not a skip).
    let o = run(&mut vssl(&[
        "extract",
        "--weights",
        s(&weights),
        "--input",
        s(&videos.join("c.mkv")),
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("c.mkv"), "{}", stderr(&o));
}

#[test]
fn extract_rejects_bad_inputs_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let weights = d.path().join("tiny.safetensors");
    let o = import_tiny(&fixture("tiny_state.pth"), &weights, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("f.safetensors");
    let extract = |weights: &Path, input: &Path, extra: &[&str]| {
        let mut args = vec![
            "extract",
            "--weights",
            s(weights),
            "--input",
            s(input),
            "--output",
            s(&out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run(&mut vssl(&args))
    };
    let expect_2 = |o: std::process::Output, needle: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "`{needle}` not in: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    };
    let clips4 = d.path().join("c4.safetensors");
    write_safetensors_atomic(
        &clips4,
        &[(
            "clips".into(),
            Tensor::zeros((2, 3, 4, 16), DType::F32, &Device::Cpu).unwrap(),
        )],
        &HashMap::new(),
    )
    .unwrap();
    expect_2(extract(&weights, &clips4, &[]), "[N, 3, T, H, W]");
    // The wrong architecture for the weights: a shape error naming a tensor.
    let good = fixture("tiny_io.safetensors");
    expect_2(
        extract(&weights, &good, &["--arch", "r3d_18"]),
        "tensor `layer1.0.conv1.0.weight`: shape [2, 2, 3, 3, 3] in file",
    );
    // Weights without layer4: missing backbone tensors.
    let (mut t, meta) = read(&weights);
    t.retain(|k, _| !k.starts_with("layer4."));
    let partial = d.path().join("partial.safetensors");
    let t: Vec<_> = t.into_iter().collect();
    write_safetensors_atomic(&partial, &t, &meta).unwrap();
    expect_2(extract(&partial, &good, &[]), "layer4.0.conv1.0.weight");
    // Weights without metadata and no --arch.
    let bare = d.path().join("bare.safetensors");
    write_safetensors_atomic(&bare, &t, &HashMap::new()).unwrap();
    expect_2(extract(&bare, &good, &[]), "--arch");
    expect_2(extract(&weights, &good, &["--frames", "0"]), "--frames");
}

#[test]
fn decode_returns_the_written_frames() {
    let d = tempfile::tempdir().unwrap();
    let video = pattern(10, 24, 32, 3);
    for ext in ["mp4", "avi"] {
        let path = d.path().join(format!("v.{ext}"));
        vssl::data::encode::write_video(&path, &video, 25).unwrap();
        let got = vssl::data::decode::decode_video(&path, None).unwrap();
        assert_eq!((got.frames, got.height, got.width), (10, 24, 32), "{ext}");
        let mae = got
            .data
            .iter()
            .zip(&video.data)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / video.data.len() as f64;
        assert!(mae < 6.0, "{ext}: mean abs error {mae}");
        let small = vssl::data::decode::decode_video(&path, Some(12)).unwrap();
        assert_eq!((small.frames, small.height, small.width), (10, 12, 16));
        assert_eq!(small.data.len(), 10 * 12 * 16 * 3);
    }
    let junk = d.path().join("junk.mp4");
    std::fs::write(&junk, b"not a video at all").unwrap();
    for p in [junk, d.path().join("absent.avi")] {
        match vssl::data::decode::decode_video(&p, None) {
            Err(vssl::Error::Video { path, .. }) => assert_eq!(path, p),
            other => panic!("{}: expected a video error, got {other:?}", p.display()),
        }
    }
}

#[test]
fn recipe_summary_prints_the_parameter_count() {
    let d = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(d.path(), "");
    let o = run(&mut vssl(&["recipe", s(&recipe), "--summary"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    toml::from_str::<toml::Table>(&out).expect("still valid TOML");
    let line = out.lines().last().unwrap();
    let r = vssl::recipe::load(&vssl::recipe::RecipeSource::file(&recipe)).unwrap();
    let n = vssl::registry::backbone(&r.backbone, r.data.frames, r.train.seed, &Device::Cpu)
        .unwrap()
        .param_count();
    let with_fc = n + 8 * 400 + 400;
    let fmt = |n: usize| {
        let s = n.to_string();
        let mut o = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                o.push(',');
            }
            o.push(c);
        }
        o
    };
    assert_eq!(
        line,
        format!(
            "# backbone r3d_small: {} parameters ({} with a 400-class fc)",
            fmt(n),
            fmt(with_fc)
        )
    );
}
