//! Downstream metrics against brute-force references and hand-built cases.

use candle_core::{Device, Tensor};
use vssl::eval::metrics::top_k;
use vssl::eval::retrieval::recall;

fn feats(rows: &[[f32; 3]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 3), &Device::Cpu).unwrap()
}

/// Brute force: for each query, cosine similarities computed one by one.
fn brute_recall(train: &[[f32; 3]], ty: &[u32], test: &[[f32; 3]], qy: &[u32], k: usize) -> f64 {
    let cos = |a: &[f32; 3], b: &[f32; 3]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    };
    let mut hits = 0;
    for (q, qv) in test.iter().enumerate() {
        let mut s: Vec<(f32, usize)> = train
            .iter()
            .enumerate()
            .map(|(j, t)| (cos(qv, t), j))
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if s.iter().take(k).any(|&(_, j)| ty[j] == qy[q]) {
            hits += 1;
        }
    }
    hits as f64 / test.len() as f64
}

fn pseudo(n: usize, seed: u32) -> Vec<[f32; 3]> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            let mut r = [0f32; 3];
            for v in &mut r {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = (x % 1000) as f32 / 500.0 - 1.0;
            }
            r
        })
        .collect()
}

#[test]
fn recall_matches_brute_force_and_is_monotone() {
    let train = pseudo(40, 1);
    let test = pseudo(25, 2);
    let ty: Vec<u32> = (0..40).map(|i| i % 5).collect();
    let qy: Vec<u32> = (0..25).map(|i| (i * 7 % 5) as u32).collect();
    let ks = [1, 2, 5, 10, 20];
    let r = recall(&feats(&train), &ty, &feats(&test), &qy, &ks).unwrap();
    for (i, &k) in ks.iter().enumerate() {
        let b = brute_recall(&train, &ty, &test, &qy, k);
        assert!((r[i] - b).abs() < 1e-12, "k={k}: {} vs brute {b}", r[i]);
    }
    assert!(
        r.windows(2).all(|w| w[0] <= w[1]),
        "recall@k not monotone: {r:?}"
    );
}

#[test]
fn recall_is_one_when_train_equals_test() {
    let x = pseudo(30, 3);
    let y: Vec<u32> = (0..30).map(|i| i % 4).collect();
    let r = recall(&feats(&x), &y, &feats(&x), &y, &[1]).unwrap();
    assert_eq!(r, vec![1.0]);
}

#[test]
fn recall_hand_case() {
    // query 0 is nearest to train 1 (label 1, wrong) then train 0 (label 0, right).
    let train = [[1.0, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let test = [[1.0, 0.0, 0.0]];
    let r = recall(&feats(&train), &[0, 1, 2], &feats(&test), &[0], &[1, 2, 3]).unwrap();
    assert_eq!(r, vec![0.0, 1.0, 1.0]);
}

#[test]
fn top_k_counts_ties_against_the_target() {
    let logits = Tensor::new(
        &[[0.0f32, 0.0, 0.0], [0.1, 0.9, 0.5], [0.3, 0.2, 0.1]],
        &Device::Cpu,
    )
    .unwrap();
    assert!((top_k(&logits, &[0, 1, 2], 1).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!((top_k(&logits, &[0, 2, 1], 2).unwrap() - 2.0 / 3.0).abs() < 1e-12);
}
