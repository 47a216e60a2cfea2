//! Held-out pretext accuracy of a pretrained run: the run's own method, with its
//! trained weights, on batches drawn from the *test* videos (which pretraining never
//! sees), in evaluation mode (no dropout, batch norm on running statistics). The
//! training log's `acc` is measured on the training batches while the weights move;
//! this is the figure to quote for "does the pretext task generalise" (issue 16,
//! speed sorting with `label = "sort"`).
//!
//! ```sh
//! cargo run --release -- train experiments/speed_sort_quick.toml --out weights/ss
//! cargo run --release --example pretext_accuracy -- weights/ss --batches 20
//! ```
//! Prints one JSON line: `{"run", "batches", "videos", "acc", "loss"}` (means over the
//! batches, each weighted by its videos).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use vssl::data::clip::Batch;
use vssl::data::datasets::VideoDataset;
use vssl::data::loader::{make_batch, BatchPlan};
use vssl::data::{Split, Video};
use vssl::io::read_safetensors;
use vssl::recipe::{self, RecipeSource};
use vssl::run_dir::RunDir;
use vssl::{registry, Error, Result};

/// A dataset whose training split is another dataset's test split, so the loader's
/// batches (always drawn from the training split) come from held-out videos.
struct HeldOut(Arc<dyn VideoDataset>);

impl VideoDataset for HeldOut {
    fn len(&self, _: Split) -> usize {
        self.0.len(Split::Test)
    }
    fn label(&self, _: Split, i: usize) -> Option<u32> {
        self.0.label(Split::Test, i)
    }
    fn num_classes(&self) -> usize {
        self.0.num_classes()
    }
    fn video(&self, _: Split, i: usize) -> Result<Video> {
        self.0.video(Split::Test, i)
    }
    fn describe(&self) -> String {
        format!("test split of {}", self.0.describe())
    }
}

#[derive(Parser)]
struct Args {
    /// A pretraining run directory (with `model.safetensors`).
    run: PathBuf,
    /// Batches of held-out videos to average over.
    #[arg(long, default_value_t = 20)]
    batches: u64,
    /// Seed of the held-out batches' clip draws (independent of the run's).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run = RunDir::new(&args.run);
    let r = recipe::load(&RecipeSource {
        file: run.recipe(),
        ..Default::default()
    })?;
    let device = Device::Cpu;
    let mut p = registry::pretext(&r.method, &r.backbone, r.data.frames, r.train.seed, &device)?;
    let (tensors, _) = read_safetensors(&run.model(), &device)?;
    let (heads, net): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with("pretext."));
    let heads = heads
        .into_iter()
        .map(|(k, v)| (k["pretext.".len()..].to_string(), v))
        .collect();
    for report in [
        p.backbone().vars().load(&net.into_iter().collect())?,
        p.head_vars().load(&heads)?,
    ] {
        if !report.missing.is_empty() {
            return Err(Error::BadInput(format!(
                "{}: tensors missing: {:?}",
                run.model().display(),
                report.missing
            )));
        }
    }
    let ds = HeldOut(registry::dataset(&r.data)?);
    let plan = BatchPlan {
        planner: p.planner(),
        size: r.data.size,
        batch_size: r.train.batch_size,
        seed: args.seed,
        augment: r.data.augment.clone(),
    };
    let (mut acc, mut loss, mut videos) = (0.0, 0.0, 0usize);
    for step in 0..args.batches {
        let hb = make_batch(&ds, &plan, step)?;
        let batch = Batch {
            clips: Tensor::from_vec(hb.data, hb.shape.to_vec(), &device)?,
            videos: hb.videos,
            clip_meta: hb.clip_meta,
            seed: hb.seed,
            slice: hb.slice,
        };
        let out = p.step(&batch, false)?;
        let a = out
            .scalars
            .iter()
            .find(|(k, _)| *k == "acc")
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::BadInput("this method logs no `acc`".into()))?;
        let l = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        acc += a * batch.videos as f64;
        loss += l * batch.videos as f64;
        videos += batch.videos;
    }
    let n = videos.max(1) as f64;
    let line = serde_json::json!({
        "run": args.run, "batches": args.batches, "videos": videos,
        "acc": acc / n, "loss": loss / n,
    });
    println!("{line}");
    Ok(())
}
