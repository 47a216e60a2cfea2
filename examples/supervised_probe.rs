//! Diagnostic: supervised training of the quickstart backbone on the synthetic labels.
use candle_core::{Device, Tensor};
use vssl::data::loader::eval_clips;
use vssl::data::Split;
use vssl::nn::VarStore;
use vssl::pretext::heads::Linear;
use vssl::recipe::{self, RecipeSource};
use vssl::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = recipe::load(&RecipeSource {
        file: "experiments/quickstart.toml".into(),
        env: true,
        sets: args,
        ..Default::default()
    })?;
    let dev = Device::Cpu;
    let ds = vssl::registry::dataset(&r)?;
    let net = vssl::registry::backbone(&r, &dev)?;
    let head_vs = VarStore::new(&dev, 1);
    let head = Linear::new(&head_vs, net.out_channels(), 8)?;
    let mut params = net.vars().trainable();
    params.extend(head_vs.trainable());
    let mut opt = Optimizer::new(
        OptimizerConfig {
            kind: if std::env::var("ADAM").is_ok() {
                OptimizerKind::Adamw
            } else {
                OptimizerKind::Sgd
            },
            momentum: 0.9,
            nesterov: std::env::var("ADAM").is_err(),
            weight_decay: 5e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
        },
        params,
    )?;
    let n = ds.len(Split::Train);
    let (f, s) = (r.data.frames, r.data.size);
    for step in 0..300usize {
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for j in 0..16 {
            let i = (step * 16 + j * 7919) % n;
            let v = ds.video(Split::Train, i)?;
            data.extend(eval_clips(&v, f, 2, 1, s));
            labels.push(ds.label(Split::Train, i).unwrap());
        }
        let x = Tensor::from_vec(data, (16, 3, f, s, s), &dev)?;
        let rot = std::env::var("ROT").is_ok();
        let (x, labels) = if rot {
            let ks: Vec<u32> = (0..16).map(|j| ((j * 7 + step * 3) % 4) as u32).collect();
            let parts = (0..16)
                .map(|j| {
                    vssl::pretext::geometric::rot90(&x.narrow(0, j, 1).unwrap(), ks[j] as usize)
                        .unwrap()
                })
                .collect::<Vec<_>>();
            (Tensor::cat(&parts, 0)?, ks)
        } else {
            (x, labels)
        };
        let y = Tensor::from_vec(labels, 16, &dev)?;
        let logits = head.forward(&net.pooled(&x, true)?)?;
        let loss = vssl::loss::cross_entropy(&logits, &y)?;
        let g = loss.backward()?;
        opt.step(
            &g,
            if std::env::var("ADAM").is_ok() {
                1e-3
            } else {
                0.02
            },
        )?;
        if step % 20 == 0 {
            println!(
                "step {step} loss {:.3} acc {:.3}",
                loss.to_scalar::<f32>()?,
                vssl::loss::accuracy(&logits, &y)?
            );
        }
    }
    let mut hits = 0;
    let m = ds.len(Split::Test);
    for i in 0..m {
        let v = ds.video(Split::Test, i)?;
        let x = Tensor::from_vec(eval_clips(&v, f, 2, 1, s), (1, 3, f, s, s), &dev)?;
        let p = head
            .forward(&net.pooled(&x, false)?)?
            .argmax(1)?
            .to_vec1::<u32>()?[0];
        if p == ds.label(Split::Test, i).unwrap() {
            hits += 1;
        }
    }
    println!("test acc {:.3}", hits as f64 / m as f64);
    Ok(())
}
