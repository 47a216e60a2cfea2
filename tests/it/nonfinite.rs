//! The non-finite guard: an infinite loss (injected with the test-only key
//! `train.inject_nonfinite_at`) stops the run naming the step and keeping the last good
//! checkpoint, or, with `train.on_nonfinite = "skip_step"`, skips that update, counts
//! it in the metrics and trains on (resumably).

use crate::common::{assert_bit_identical, metric_column, stderr, tensors, tiny_recipe, train};

#[test]
fn a_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let out = dir.path().join("run");
    let o = train(&recipe, &out, &["--set", "train.inject_nonfinite_at=5"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("the loss is inf at step 5") && e.contains("skip_step"),
        "{e}"
    );
    let steps: Vec<u64> = vssl::run_dir::RunDir::new(&out)
        .checkpoints()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        steps,
        [3],
        "the checkpoint before the bad step is kept, none after it"
    );
    assert!(!out.join("model.safetensors").exists());
    let ck = tensors(&vssl::run_dir::RunDir::new(&out).checkpoint(3));
    for (k, t) in &ck {
        if t.dtype() == candle_core::DType::F32 {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{k} is not finite");
        }
    }
}

#[test]
fn skip_step_skips_the_update_counts_it_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(
        dir.path(),
        "[train]\non_nonfinite = \"skip_step\"\ninject_nonfinite_at = 2\n",
    );
    let straight = dir.path().join("straight");
    let o = train(&recipe, &straight, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("update skipped"), "{}", stderr(&o));
    let model = tensors(&straight.join("model.safetensors"));
    for (k, t) in &model {
        if t.dtype() == candle_core::DType::F32 {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{k} is not finite");
        }
    }
    let skipped = |run: &std::path::Path| -> Vec<Option<f64>> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["skipped_steps"].as_f64()
            })
            .collect()
    };
    let counts = skipped(&straight);
    assert_eq!(
        counts,
        [None, Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0)],
        "counted from step 2 on"
    );
    // The skipped step's infinite loss is logged as null (JSON has no infinity).
    assert_eq!(metric_column(&straight, "lr").len(), 6);
    // Different from a run without the bad step, and resumable bit for bit.
    let clean = dir.path().join("clean");
    let o = train(&recipe, &clean, &["--set", "train.inject_nonfinite_at=100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = tensors(&clean.join("model.safetensors"));
    assert!(a.iter().any(|(k, t)| {
        let d = (t.to_dtype(candle_core::DType::F64).unwrap()
            - model[k].to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        d > 0.0
    }));
    let resumed = dir.path().join("resumed");
    let o = train(&recipe, &resumed, &["--stop-after", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&recipe, &resumed, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bit_identical(&model, &tensors(&resumed.join("model.safetensors")));
    assert_eq!(skipped(&resumed), counts, "the count survives the resume");
}
