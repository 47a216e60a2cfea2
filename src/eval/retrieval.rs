//! Nearest-neighbour retrieval: every test video queries the train videos by cosine
//! similarity of its L2-normalised feature (clip features averaged, then
//! normalised); recall@k is the share of queries with at least one same-class video
//! among the k nearest.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::Serialize;

use super::Features;
use crate::loss::l2_normalize;
use crate::Result;

/// recall@k for each k, as `{"recall@1": ..}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Retrieval {
    #[serde(flatten)]
    pub recall: BTreeMap<String, f64>,
}

/// recall@k of `test` queries against `train` (features `[N, C]`).
pub fn recall(
    train: &Tensor,
    train_y: &[u32],
    test: &Tensor,
    test_y: &[u32],
    ks: &[usize],
) -> Result<Vec<f64>> {
    let sims = l2_normalize(test)?
        .matmul(&l2_normalize(train)?.t()?)?
        .to_vec2::<f32>()?;
    let mut hits = vec![0usize; ks.len()];
    for (q, row) in sims.iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Most similar first; ties broken by index so results are deterministic.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let first_hit = order.iter().position(|&j| train_y[j] == test_y[q]);
        for (h, &k) in hits.iter_mut().zip(ks) {
            if first_hit.is_some_and(|p| p < k) {
                *h += 1;
            }
        }
    }
    Ok(hits
        .into_iter()
        .map(|h| h as f64 / test_y.len().max(1) as f64)
        .collect())
}

/// Retrieval metrics of extracted features.
pub fn recall_at_k(f: &Features, ks: &[usize]) -> Result<Retrieval> {
    let r = recall(
        &f.train.videos()?,
        &f.train.labels,
        &f.test.videos()?,
        &f.test.labels,
        ks,
    )?;
    Ok(Retrieval {
        recall: ks
            .iter()
            .zip(r)
            .map(|(k, v)| (format!("recall@{k}"), v))
            .collect(),
    })
}
