//! The fused residual block against the composition of its layers: the output,
//! every gradient and the running statistics bit for bit, and the cases it must
//! leave to the composition.

use candle_core::{DType, Device, Tensor, Var};
use vssl::nn::VarStore;
use vssl::ops::block::{residual_block_train, ResidualBlock};
use vssl::ops::{conv3d, fused::add_relu, BatchNorm3d, Conv3d, Conv3dConfig};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Layers {
    vs: VarStore,
    conv1: Conv3d,
    bn1: BatchNorm3d,
    conv2: Conv3d,
    bn2: BatchNorm3d,
}

/// A block of `c` channels with random weights and norm parameters (the same for
/// the same seed).
fn layers(c: usize, stride: usize, seed: u64) -> Layers {
    let vs = VarStore::new(&Device::Cpu, seed);
    let cfg = |s: usize| Conv3dConfig {
        stride: [s; 3],
        padding: [1; 3],
        dilation: [1; 3],
    };
    let conv1 = Conv3d::new(&vs.pp("c1"), c, c, [3; 3], cfg(stride), false).unwrap();
    let bn1 = BatchNorm3d::new(&vs.pp("n1"), c).unwrap();
    let conv2 = Conv3d::new(&vs.pp("c2"), c, c, [3; 3], cfg(1), false).unwrap();
    let bn2 = BatchNorm3d::new(&vs.pp("n2"), c).unwrap();
    for (k, (name, v)) in vs.all().into_iter().enumerate() {
        if name.ends_with("weight") && name.starts_with('n') || name.ends_with("bias") {
            let vals: Vec<f32> = rand_vec(c, seed * 31 + k as u64)
                .iter()
                .map(|r| {
                    if name.ends_with("weight") {
                        1.0 + 0.5 * r
                    } else {
                        0.3 * r
                    }
                })
                .collect();
            v.set(&Tensor::from_vec(vals, c, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    Layers {
        vs,
        conv1,
        bn1,
        conv2,
        bn2,
    }
}

fn composed(l: &Layers, x: &Tensor) -> Tensor {
    let y = conv3d(x, &l.conv1.weight, None, &l.conv1.cfg).unwrap();
    let y = l.bn1.forward_act(&y, true, true).unwrap();
    let y = conv3d(&y, &l.conv2.weight, None, &l.conv2.cfg).unwrap();
    let y = l.bn2.forward_t(&y, true).unwrap();
    add_relu(&y, x).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn fused_block_equals_the_composition_bit_for_bit() {
    // 8 and 16 channels; maps small (direct kernels) and large enough for Winograd.
    for (c, d) in [(8usize, [2usize, 4, 4, 6, 6]), (16, [2, 16, 6, 10, 10])] {
        let dims = [d[0], c, d[2], d[3], d[4]];
        let n: usize = dims.iter().product();
        let xv: Vec<f32> = rand_vec(n, 5).iter().map(|v| 2.0 * v + 0.1).collect();
        let r = Tensor::from_vec(rand_vec(n, 6), &dims, &Device::Cpu).unwrap();
        let mut out = Vec::new();
        for fused in [true, false] {
            let l = layers(c, 1, 3);
            let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), &dims, &Device::Cpu).unwrap())
                .unwrap();
            let y = if fused {
                let b = ResidualBlock {
                    conv1: &l.conv1,
                    bn1: &l.bn1,
                    conv2: &l.conv2,
                    bn2: &l.bn2,
                };
                residual_block_train(x.as_tensor(), &b)
                    .unwrap()
                    .expect("fused path")
            } else {
                composed(&l, x.as_tensor())
            };
            let loss = (&y * &r).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let mut rec = vec![("y".to_string(), f32s(&y))];
            rec.push(("dx".into(), f32s(grads.get(x.as_tensor()).unwrap())));
            for (name, v) in l.vs.all() {
                rec.push((name.clone(), f32s(v.as_tensor())));
                if let Some(g) = grads.get(v.as_tensor()) {
                    rec.push((format!("d {name}"), f32s(g)));
                }
            }
            out.push(rec);
        }
        let (f, u) = (&out[0], &out[1]);
        assert_eq!(f.len(), u.len());
        assert!(
            f.iter().any(|(k, _)| k == "d c1.weight"),
            "{:?}",
            f.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        for ((kf, vf), (ku, vu)) in f.iter().zip(u) {
            assert_eq!(kf, ku);
            assert_eq!(vf.len(), vu.len(), "{kf}");
            for (i, (a, b)) in vf.iter().zip(vu).enumerate() {
                // `==`, so +0 and -0 count as equal (0 + -0 is +0 in candle's sums).
                assert!(
                    a == b || a.is_nan() && b.is_nan(),
                    "{kf}[{i}] (c {c}): fused {a} vs composed {b}"
                );
            }
        }
        // Not vacuous: the gradients are nonzero and the running mean moved.
        let dx = &f.iter().find(|(k, _)| k == "dx").unwrap().1;
        assert!(dx.iter().filter(|v| **v != 0.0).count() > dx.len() / 2);
        let rm = &f.iter().find(|(k, _)| k == "n1.running_mean").unwrap().1;
        assert!(rm.iter().all(|v| *v != 0.0));
    }
}

#[test]
fn fused_block_declines_what_it_cannot_compute() {
    let x = Tensor::from_vec(
        rand_vec(2 * 8 * 4 * 6 * 6, 1),
        &[2, 8, 4, 6, 6],
        &Device::Cpu,
    )
    .unwrap();
    let run = |l: &Layers, x: &Tensor| {
        let b = ResidualBlock {
            conv1: &l.conv1,
            bn1: &l.bn1,
            conv2: &l.conv2,
            bn2: &l.bn2,
        };
        residual_block_train(x, &b).unwrap().is_some()
    };
    assert!(run(&layers(8, 1, 1), &x));
    // A strided first conv changes the shape: no identity skip.
    assert!(!run(&layers(8, 2, 1), &x));
    // Weights larger than the activation (deep layers): packing them would cost more
    // than the gradient edges it saves.
    let small = Tensor::from_vec(rand_vec(32 * 8, 2), &[1, 32, 2, 2, 2], &Device::Cpu).unwrap();
    assert!(!run(&layers(32, 1, 1), &small));
    // f64 input: the composition's business.
    assert!(!run(&layers(8, 1, 1), &x.to_dtype(DType::F64).unwrap()));
}
