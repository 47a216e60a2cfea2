//! A method defined outside the crate (examples/rotation_reversal.rs, through the
//! geometric family trait only) trains through the public API, resumes bit-exactly,
//! and its run directory is evaluated by `vssl eval` like any other.

use candle_core::Device;

use super::common::{assert_bit_identical, metric_column, run, stderr, tensors, vssl};

#[allow(dead_code)]
#[path = "../../examples/rotation_reversal.rs"]
mod example;

fn args(out: &std::path::Path, resume: bool, stop_after: Option<u64>) -> example::Args {
    example::Args {
        recipe: super::common::repo().join("examples/rotation_reversal.toml"),
        out: out.to_path_buf(),
        // Tiny: 6 steps of a small network on a small synthetic set.
        sets: [
            "train.steps=6",
            "train.batch_size=4",
            "train.checkpoint_every=3",
            "train.log_every=1",
            "data.size=16",
            "data.synthetic.size=16",
            "data.synthetic.train_videos=16",
            "data.synthetic.test_videos=16",
            "backbone.widths=[4,8,8,8]",
        ]
        .map(String::from)
        .to_vec(),
        resume,
        stop_after,
    }
}

#[test]
fn outside_method_trains_resumes_exactly_and_evaluates() {
    let d = tempfile::tempdir().unwrap();
    let straight = d.path().join("straight");
    let s = example::run(&args(&straight, false, None), &Device::Cpu).unwrap();
    assert_eq!((s.steps_done, s.total_steps), (6, 6));
    let t = tensors(&straight.join("model.safetensors"));
    // The head names the 8 transforms (4 rotations x {forward, reversed}).
    assert_eq!(t["pretext.fc.weight"].dims()[0], 8);

    let resumed = d.path().join("resumed");
    let s = example::run(&args(&resumed, false, Some(3)), &Device::Cpu).unwrap();
    assert_eq!(s.steps_done, 3);
    assert!(!resumed.join("model.safetensors").exists());
    example::run(&args(&resumed, true, None), &Device::Cpu).unwrap();
    assert_bit_identical(&t, &tensors(&resumed.join("model.safetensors")));
    assert_eq!(
        metric_column(&straight, "loss"),
        metric_column(&resumed, "loss")
    );

    // `vssl eval` reads the run (its recipe records the method as external).
    let o = run(&mut vssl(&[
        "eval",
        straight.to_str().unwrap(),
        "--protocol",
        "linear",
        "--set",
        "eval.linear_epochs=20",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("eval/linear.json")).unwrap()).unwrap();
    let top1 = j["metrics"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{j}");

    // `vssl train` cannot build a method it does not know: a clear refusal, exit 2,
    // nothing written.
    let out = d.path().join("refused");
    let o = run(&mut vssl(&[
        "train",
        "examples/rotation_reversal.toml",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("method.kind = \"external\" (`rotation_reversal`)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("recipe.resolved.toml").exists());
}

/// A wrong setting in the outside method's own table is bad input naming the key.
#[test]
fn outside_method_settings_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let mut a = args(&d.path().join("bad"), false, None);
    a.sets.push("method.settings.stride_min=0".into());
    let e = example::run(&a, &Device::Cpu).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("method.settings.stride_min"),
        "{e}"
    );
    let mut a = args(&d.path().join("bad2"), false, None);
    a.sets.push("method.name=\"\"".into());
    let e = example::run(&a, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("method.name"), "{e}");
}
