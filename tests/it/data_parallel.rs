//! Data parallelism on the CPU, with threads as ranks and `ThreadGroup` as the
//! all-reduce: the shards of a batch are its rows and cover each sample once per
//! epoch, and N ranks stepping on their shards end with the weights one process
//! gets on the whole batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use vssl::data::clip::BatchSlice;
use vssl::data::loader::{make_batch, make_shard, video_for, BatchPlan, Shard};
use vssl::data::sampler::StridedPlanner;
use vssl::ops::collective::{Collective, ThreadGroup};
use vssl::train::parallel::Parallel;

use super::common::{max_abs_diff, tensors, tiny_recipe_for};

/// Rotation prediction with the per-sample randomness a shard must draw as the whole
/// batch does: one rotation per clip, dropout.
const ROTATION_KEYS: &str = "stride_max = 2\nrotations_per_clip = \"one\"\ndropout = 0.5";

fn recipe(path: &Path) -> vssl::recipe::Recipe {
    vssl::recipe::load(&vssl::recipe::RecipeSource::with_sets(
        path.to_path_buf(),
        vec![],
    ))
    .unwrap()
}

fn plan(batch_size: usize, seed: u64) -> BatchPlan {
    BatchPlan {
        planner: Arc::new(StridedPlanner::new(2, 4, (1, 3))),
        size: 16,
        batch_size,
        seed,
        augment: Default::default(),
    }
}

/// For N = 1..4 ranks, per-rank batches of 1..3 and dataset sizes that do and do
/// not divide the batch: the ranks' slices of a step are disjoint and make up the
/// whole batch, and over the steps that span an epoch every video of the split is
/// drawn exactly once in it.
#[test]
fn rank_shards_cover_every_sample_exactly_once_per_epoch() {
    for world in 1..=4usize {
        for per_rank in 1..=3usize {
            let b = world * per_rank;
            let p = plan(b, 7 + world as u64);
            for n in [1usize, 2, 3, 5, 7, 12, 16, 17, 31] {
                // Two whole epochs and the start of a third.
                let steps = (2 * n).div_ceil(b) as u64 + 1;
                let mut seen: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
                for step in 0..steps {
                    let mut rows = Vec::new();
                    for rank in 0..world {
                        let s = Shard { rank, world }.slice(b).unwrap();
                        assert_eq!(s.total, b);
                        for j in s.first..s.first + per_rank {
                            rows.push(j);
                            let pos = step * b as u64 + j as u64;
                            seen.entry(pos / n as u64)
                                .or_default()
                                .push(video_for(n, &p, step, j));
                        }
                    }
                    assert_eq!(
                        rows,
                        (0..b).collect::<Vec<_>>(),
                        "world {world}: step {step}"
                    );
                }
                for epoch in 0..2 {
                    let mut got = seen[&epoch].clone();
                    got.sort_unstable();
                    assert_eq!(
                        got,
                        (0..n).collect::<Vec<_>>(),
                        "world {world}, batch {b}, {n} videos: epoch {epoch}"
                    );
                }
            }
        }
    }
    // A batch that does not split evenly is refused, naming the key.
    let e = Shard { rank: 0, world: 3 }
        .slice(4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.batch_size = 4") && e.contains("3 ranks"),
        "{e}"
    );
}

/// Each rank's batch is its rows of the whole batch, bit for bit: data, labels,
/// clip metadata; the method's seed is the whole step's.
#[test]
fn a_shard_is_its_rows_of_the_whole_batch() {
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe_for(d.path(), "geometric", "stride_max = 2", "");
    let r = recipe(&path);
    let ds = vssl::registry::dataset(&r.data).unwrap();
    let p = plan(4, 3);
    for step in [0u64, 5] {
        let whole = make_batch(ds.as_ref(), &p, step).unwrap();
        assert_eq!(whole.slice, BatchSlice::whole(4));
        for world in [1usize, 2, 4] {
            let parts: Vec<_> = (0..world)
                .map(|rank| make_shard(ds.as_ref(), &p, step, Shard { rank, world }).unwrap())
                .collect();
            let data: Vec<f32> = parts.iter().flat_map(|h| h.data.clone()).collect();
            assert!(
                data.len() == whole.data.len()
                    && data
                        .iter()
                        .zip(&whole.data)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "world {world}, step {step}: the shards' data is not the whole batch's"
            );
            let labels: Vec<_> = parts.iter().flat_map(|h| h.labels.clone()).collect();
            let metas: Vec<_> = parts.iter().flat_map(|h| h.clip_meta.clone()).collect();
            assert_eq!(labels, whole.labels);
            assert_eq!(metas, whole.clip_meta);
            for (rank, h) in parts.iter().enumerate() {
                assert_eq!(h.seed, whole.seed);
                assert_eq!(h.videos, 4 / world);
                assert_eq!(h.slice.first, rank * 4 / world);
                assert_eq!(h.shape[0], whole.shape[0] / world);
            }
        }
    }
}

/// The largest absolute difference between two sets of tensors with the same names.
fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> (f32, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut worst = (0f32, String::new());
    for (k, x) in a {
        if !x.dtype().is_float() {
            let ints = |t: &Tensor| {
                t.to_dtype(candle_core::DType::I64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<i64>()
                    .unwrap()
            };
            assert_eq!(ints(x), ints(&b[k]), "{k}");
            continue;
        }
        let d = max_abs_diff(x, &b[k]);
        if d > worst.0 {
            worst = (d, k.clone());
        }
    }
    worst
}

/// Trains the recipe at `path` into `out`; with `world` ranks when given (threads,
/// each initialised from its own seed so that the start from rank 0's weights is
/// exercised), returning every rank's model.
fn fit(path: &Path, out: &Path, world: Option<(usize, bool)>) -> Vec<BTreeMap<String, Tensor>> {
    fit_with(path, out, world, None, false)
}

/// [`fit`], stopping after `stop_after` steps or resuming.
fn fit_with(
    path: &Path,
    out: &Path,
    world: Option<(usize, bool)>,
    stop_after: Option<u64>,
    resume: bool,
) -> Vec<BTreeMap<String, Tensor>> {
    let r = Arc::new(recipe(path));
    let one = |parallel: Option<Parallel>, init_seed: u64| {
        let mut p = vssl::registry::pretext(
            &r.method,
            &r.backbone,
            r.data.frames,
            init_seed,
            &Device::Cpu,
        )
        .unwrap();
        let opts = vssl::train::FitOptions {
            loader: vssl::train::LoaderConfig::from(&r.data),
            resume,
            stop_after,
            recipe: None,
            name: "data-parallel".into(),
            force: false,
            parallel,
        };
        let ds = vssl::registry::dataset(&r.data).unwrap();
        let run = vssl::run_dir::RunDir::new(out);
        vssl::train::fit(p.as_mut(), ds, &r.train, &opts, &run, &Device::Cpu).unwrap();
        vssl::train::trainer::model_tensors(p.as_ref())
            .into_iter()
            .collect::<BTreeMap<_, _>>()
    };
    let Some((world, sync_bn)) = world else {
        return vec![one(None, r.train.seed)];
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadGroup::new(world)
            .unwrap()
            .into_iter()
            .map(|g| {
                let seed = r.train.seed + g.rank() as u64;
                let group: Arc<dyn Collective> = Arc::new(g);
                let one = &one;
                s.spawn(move || one(Some(Parallel { group, sync_bn }), seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// N = 2 and 4 thread ranks with synchronised batch norm, each on its quarter or
/// half of a batch of 4, end one step (rotations drawn one per clip, dropout 0.5,
/// gradient clipping on, the recipe's learning rate) with the weights of one
/// process on the whole batch, and identical weights on every rank. Not bit-exact:
/// every gradient is a different f32 sum (the whole batch's one sum over its
/// videos, the ranks' per-rank sums added and divided by N; each kernel blocks a
/// batch of 1 or 2 otherwise than one of 4; the synchronised statistics add up
/// otherwise than the CPU kernel's), so the weights differ by a few f32 roundings
/// of the update: within 1e-6, where the step itself moved them by 0.26. With
/// per-rank batch norm the ranks still agree bit for bit.
#[test]
fn ranks_on_their_shards_step_to_the_weights_of_one_process_on_the_whole_batch() {
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe_for(
        d.path(),
        "geometric",
        ROTATION_KEYS,
        "[train]\nsteps = 1\nbatch_size = 4\nwarmup_steps = 0\n",
    );
    let base = fit(&path, &d.path().join("one"), None).remove(0);
    let r = recipe(&path);
    let fresh: BTreeMap<String, Tensor> = vssl::train::trainer::model_tensors(
        vssl::registry::pretext(
            &r.method,
            &r.backbone,
            r.data.frames,
            r.train.seed,
            &Device::Cpu,
        )
        .unwrap()
        .as_ref(),
    )
    .into_iter()
    .collect();
    let floats = |m: &BTreeMap<String, Tensor>| -> BTreeMap<String, Tensor> {
        m.iter()
            .filter(|(_, t)| t.dtype().is_float())
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    };
    let (step, what) = max_diff(&floats(&fresh), &floats(&base));
    assert!(
        step > 1e-3,
        "the step moved the weights by only {step} ({what})"
    );
    for world in [2usize, 4] {
        let out = d.path().join(format!("dp{world}"));
        let ranks = fit(&path, &out, Some((world, true)));
        for (k, m) in ranks.iter().enumerate().skip(1) {
            let (dd, w) = max_diff(&ranks[0], m);
            assert_eq!(dd, 0.0, "rank {k} differs from rank 0 at {w}");
        }
        let (diff, what) = max_diff(&base, &ranks[0]);
        println!(
            "world {world}: max |dp - one process| = {diff:e} ({what}); the step moved weights by up to {step:e}"
        );
        assert!(diff <= 1e-6, "world {world}: {diff} at {what}");
        // Rank 0 wrote the run directory's model, the same weights.
        let written = tensors(&out.join("model.safetensors"));
        assert_eq!(max_diff(&ranks[0], &written).0, 0.0);
    }
    let ranks = fit(&path, &d.path().join("dp2-local-bn"), Some((2, false)));
    assert_eq!(
        max_diff(&ranks[0], &ranks[1]).0,
        0.0,
        "per-rank BN: ranks differ"
    );
    let (diff, _) = max_diff(&base, &ranks[0]);
    assert!(
        diff > 1e-6,
        "per-rank statistics should differ from the whole batch's"
    );
}

/// A data-parallel run stopped after its step-2 checkpoint and resumed on the same
/// ranks ends bit for bit where the uninterrupted run does (per-rank and
/// synchronised batch norm); resumed on another number of ranks it carries on (with
/// a warning saying what differs) to within rounding of it.
#[test]
fn a_data_parallel_run_resumes_exactly_on_the_same_ranks() {
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe_for(
        d.path(),
        "geometric",
        "stride_max = 2\nrotations_per_clip = \"one\"",
        "[train]\nsteps = 4\nbatch_size = 4\ncheckpoint_every = 2\n",
    );
    for sync_bn in [false, true] {
        let tag = if sync_bn { "sync" } else { "local" };
        let straight = fit(
            &path,
            &d.path().join(format!("straight-{tag}")),
            Some((2, sync_bn)),
        );
        let out = d.path().join(format!("resumed-{tag}"));
        fit_with(&path, &out, Some((2, sync_bn)), Some(2), false);
        assert!(!out.join("model.safetensors").exists(), "stopped early");
        let resumed = fit_with(&path, &out, Some((2, sync_bn)), None, true);
        assert_eq!(
            max_diff(&straight[0], &resumed[0]).0,
            0.0,
            "{tag}: resumed != straight"
        );
        assert_eq!(
            max_diff(&resumed[0], &resumed[1]).0,
            0.0,
            "{tag}: ranks differ"
        );
        if sync_bn {
            let out = d.path().join("resumed-on-one");
            fit_with(&path, &out, Some((2, true)), Some(2), false);
            let one = fit_with(&path, &out, None, None, true).remove(0);
            let (diff, what) = max_diff(&straight[0], &one);
            assert!(diff <= 1e-5, "2 ranks then 1: {diff} at {what}");
        }
    }
}

/// `vssl train --ranks 2`: two processes meeting over TCP through the run
/// directory end bit for bit where two thread ranks in one process do (the same
/// rank-order sums), within rounding of one process on the whole batch after two
/// steps (synchronised batch norm), rank 0 alone writing the run; a batch the ranks
/// cannot split and a bad rank count are refused with exit code 2.
#[test]
fn vssl_train_ranks_runs_one_process_per_rank() {
    use super::common::{metric_column, stderr, stdout, train};
    let d = tempfile::tempdir().unwrap();
    let path = tiny_recipe_for(
        d.path(),
        "geometric",
        ROTATION_KEYS,
        "[train]\nsteps = 2\nbatch_size = 4\nsync_bn = true\n",
    );
    let (one, dp) = (d.path().join("one"), d.path().join("dp"));
    let o = train(&path, &one, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&path, &dp, &["--ranks", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        dp.display().to_string(),
        "rank 0 alone prints the run"
    );
    let (a, b) = (
        tensors(&one.join("model.safetensors")),
        tensors(&dp.join("model.safetensors")),
    );
    let (diff, what) = max_diff(&a, &b);
    assert!(diff <= 1e-5, "--ranks 2 vs one process: {diff} at {what}");
    let threads = fit(&path, &d.path().join("threads"), Some((2, true))).remove(0);
    assert_eq!(
        max_diff(&threads, &b).0,
        0.0,
        "--ranks 2 vs two thread ranks"
    );
    assert_eq!(
        metric_column(&dp, "step"),
        vec![1.0, 2.0],
        "one metrics line per step"
    );
    let (la, lb) = (metric_column(&one, "loss"), metric_column(&dp, "loss"));
    assert!(
        (la[0] - lb[0]).abs() < 1e-5,
        "the logged loss is the ranks' mean: {la:?} {lb:?}"
    );
    assert!(
        !dp.join(".ranks").exists(),
        "the meeting place is cleaned up"
    );

    // Resuming on another number of ranks trains on, and says what differs.
    let switch = d.path().join("switch");
    let o = train(&path, &switch, &["--ranks", "2", "--stop-after", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&path, &switch, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was written by a run on 2 rank(s), resuming on 1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(metric_column(&switch, "step"), vec![1.0, 2.0]);

    let o = train(&path, &d.path().join("three"), &["--ranks", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("train.batch_size = 4"),
        "{}",
        stderr(&o)
    );
    // A rank whose hub never starts stops with a clear error, not a hang.
    let lone = super::common::vssl(&[
        "--device",
        "cpu",
        "train",
        path.to_str().unwrap(),
        "--out",
        d.path().join("lone").to_str().unwrap(),
    ])
    .env("VSSL_RANK", "1")
    .env("VSSL_WORLD", "2")
    .env("VSSL_RANKS_TIMEOUT", "1")
    .output()
    .unwrap();
    assert_eq!(lone.status.code(), Some(2), "{}", stderr(&lone));
    assert!(
        stderr(&lone).contains("rank 1 of 2 found no hub"),
        "{}",
        stderr(&lone)
    );
    // --gpus is --ranks on GPUs: refused on this machine, pointing at --ranks.
    let o = train(&path, &d.path().join("gpus"), &["--gpus", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--gpus 2: ") && stderr(&o).contains("--ranks 2"),
        "{}",
        stderr(&o)
    );
    let o = train(&path, &d.path().join("zero"), &["--ranks", "zero"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--ranks zero"), "{}", stderr(&o));
}

/// The contrastive methods under data parallelism: TCLR's negatives and VTDL's
/// memory bank take every rank's videos (gathered in batch order), so 2 ranks with
/// synchronised batch norm end a step with one process's checkpoint: weights,
/// optimiser state, and VTDL's queue and key encoder. Not bit-exact for the reason
/// given above (other f32 sums); within 1e-6 where the step moved weights by far more.
#[test]
fn contrastive_methods_gather_every_ranks_videos() {
    let d = tempfile::tempdir().unwrap();
    for (name, method, keys, extra) in [
        (
            "tclr",
            "temporal_contrast",
            "sparse_stride = 2\nproj_hidden = 8\nproj_dim = 4",
            "[data]\nframes = 8\n[backbone]\ntemporal_dilation_last_stage = true\n",
        ),
        ("vtdl", "temporal_discriminative", "", ""),
    ] {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = tiny_recipe_for(
            &dir,
            method,
            keys,
            &format!("{extra}[train]\nsteps = 1\nbatch_size = 4\nwarmup_steps = 0\n"),
        );
        let (one, dp) = (dir.join("one"), dir.join("dp"));
        fit(&path, &one, None);
        fit(&path, &dp, Some((2, true)));
        let ckpt = "checkpoints/step-00000001.safetensors";
        let (a, b) = (tensors(&one.join(ckpt)), tensors(&dp.join(ckpt)));
        let part = |m: &BTreeMap<String, Tensor>, p: &str| -> BTreeMap<String, Tensor> {
            m.iter()
                .filter(|(k, _)| k.starts_with(p))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (p, tol) in [("model.", 1e-6), ("optim.", 1e-4), ("method.", 1e-4)] {
            let (a, b) = (part(&a, p), part(&b, p));
            let (diff, what) = max_diff(&a, &b);
            // Optimiser and method state: relative to their largest value (gradients
            // and queues are larger than the weights' step).
            let scale = a
                .values()
                .filter(|t| t.dtype().is_float())
                .map(|t| max_abs_diff(t, &t.zeros_like().unwrap()))
                .fold(0f32, f32::max);
            let bound = if p == "model." { tol } else { tol * scale };
            println!("{name} {p}: max |2 ranks - one process| = {diff:e} ({what}), largest value {scale:e}");
            assert!(
                diff <= bound,
                "{name} {p}: {diff} at {what} (bound {bound})"
            );
        }
        if name == "vtdl" {
            assert!(
                a.keys().any(|k| k.starts_with("method.queue")),
                "the queue is compared"
            );
        }
    }
}
