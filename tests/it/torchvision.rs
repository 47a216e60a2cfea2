//! Equivalence with torchvision's video ResNets. Weights and input are the closed-form
//! formula of `tools/torchvision_features.py` (mirrored here), so the fixture only holds
//! torchvision's eval-mode pooled features, and these tests need no PyTorch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use vssl::nn::VarStore;
use vssl::recipe::{Arch, BackboneConfig};

fn name_hash(name: &str) -> u64 {
    name.chars()
        .enumerate()
        .map(|(i, c)| c as u64 * (i as u64 + 1))
        .sum::<u64>()
        % 1000
}

/// The formula of tools/torchvision_features.py, element for element.
pub fn formula(name: &str, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let h = name_hash(name) as f64;
    if name.ends_with("num_batches_tracked") {
        return Tensor::zeros(dims, DType::I64, &Device::Cpu).unwrap();
    }
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let base = (0.37 * i as f64 + 0.01 * h).sin();
            let v = if name.ends_with("running_var") {
                1.0 + 0.25 * (base + 1.0)
            } else if name.ends_with("running_mean") {
                0.1 * base
            } else if name.ends_with("bias") {
                0.05 * base
            } else if dims.len() == 1 {
                1.0 + 0.1 * base
            } else {
                base * 2.0 / (fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

pub fn clip(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (0.013 * i as f64).sin() as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// max |a - b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn fixture() -> BTreeMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision_features.safetensors");
    vssl::io::read_safetensors(&p, &Device::Cpu)
        .expect("fixture")
        .0
}

fn check(arch: Arch, key: &str) {
    let cfg = BackboneConfig {
        arch,
        ..Default::default()
    };
    let vs = VarStore::new(&Device::Cpu, 0);
    let net = vssl::backbone::build(&cfg, &vs, 8).unwrap();
    let weights: BTreeMap<String, Tensor> = vs
        .all()
        .iter()
        .map(|(k, v)| (k.clone(), formula(k, v.dims())))
        .collect();
    let report = vs.load(&weights).unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty());
    let got = net.pooled(&clip(&[1, 3, 8, 32, 32]), false).unwrap();
    let want = &fixture()[key];
    assert_eq!(got.dims(), want.dims());
    let diff = max_abs_diff(&got, want);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("{key}: max abs diff vs torchvision {diff:.3e} (max feature {scale:.3})");
    assert!(scale > 1e-3, "degenerate reference features for {key}");
    assert!(
        diff <= 1e-4,
        "{key}: max abs diff {diff} vs torchvision (feature scale {scale})"
    );
}

#[test]
fn r3d_18_features_equal_torchvision() {
    check(Arch::R3d18, "r3d_18");
}

#[test]
fn mc3_18_features_equal_torchvision() {
    check(Arch::Mc318, "mc3_18");
}

#[test]
fn r2plus1d_18_features_equal_torchvision() {
    check(Arch::R2plus1d18, "r2plus1d_18");
}
