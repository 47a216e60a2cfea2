//! Rotation prediction: rotations are exact pixel permutations, labels line up
//! with transforms, and the cross-entropy matches a hand computation.

use candle_core::{Device, Tensor};
use vssl::pretext::geometric::rot90;

fn naive_rot90(x: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    // counter-clockwise quarter turns of an h x w image (square here)
    let mut cur = x.to_vec();
    let (mut ch, mut cw) = (h, w);
    for _ in 0..k {
        let mut out = vec![0f32; ch * cw];
        // torch.rot90 k=1: out[i][j] = in[j][W-1-i], out shape (W, H)
        for i in 0..cw {
            for j in 0..ch {
                out[i * ch + j] = cur[j * cw + (cw - 1 - i)];
            }
        }
        cur = out;
        std::mem::swap(&mut ch, &mut cw);
    }
    cur
}

#[test]
fn rot90_matches_naive_reference() {
    let (h, w) = (5, 5);
    let data: Vec<f32> = (0..(2 * h * w)).map(|i| i as f32).collect();
    let x = Tensor::from_vec(data.clone(), (2, h, w), &Device::Cpu).unwrap();
    for k in 0..4 {
        let got = rot90(&x, k)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for c in 0..2 {
            let want = naive_rot90(&data[c * h * w..(c + 1) * h * w], h, w, k);
            assert_eq!(&got[c * h * w..(c + 1) * h * w], &want[..], "k={k}");
        }
    }
    // Four quarter turns are the identity; two are a point reflection.
    let four = rot90(&rot90(&x, 2).unwrap(), 2).unwrap();
    assert_eq!(four.to_vec3::<f32>().unwrap(), x.to_vec3::<f32>().unwrap());
}

#[test]
fn cross_entropy_matches_hand_computation() {
    let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
    let got = vssl::loss::cross_entropy(&logits, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    let want = ((lse - 3.0) + (3f64).ln()) / 2.0;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn dropout_is_seeded_and_scaled() {
    let x = Tensor::ones((1000,), candle_core::DType::F32, &Device::Cpu).unwrap();
    let a = vssl::nn::dropout(&x, 0.5, true, 7)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = vssl::nn::dropout(&x, 0.5, true, 7)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
    let kept = a.iter().filter(|&&v| v > 0.0).count();
    assert!((400..600).contains(&kept), "{kept}");
    let off = vssl::nn::dropout(&x, 0.5, false, 7)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(off.iter().all(|&v| v == 1.0));
}
