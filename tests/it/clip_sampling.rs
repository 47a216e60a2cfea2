//! Clip sampling modes: which frame indices make a clip (wrap-around or clamp at the
//! end, uniform test starts, random strided clips inside the video, speed-sort clips
//! with distinct speeds and reversal), checked against hand-computed indices.

use vssl::data::clip::ClipPlanner;
use vssl::data::sampler::{clip_indices, clip_indices_clamped, uniform_starts, StridedPlanner};
use vssl::pretext::speed_sort::SpeedSortPlanner;
use vssl::pretext::{SpeedDraw, SpeedLabel, VariableSpeed};

#[test]
fn clip_index_modes() {
    // Wrap-around and clamp at the end.
    assert_eq!(clip_indices(10, 4, 3, 6), [6, 9, 2, 5]);
    assert_eq!(clip_indices_clamped(10, 4, 3, 6), [6, 9, 9, 9]);
    assert_eq!(clip_indices(20, 4, 2, 5), [5, 7, 9, 11]);
    // Uniform (test) starts: span 7 in 20 frames leaves room 13.
    assert_eq!(uniform_starts(20, 4, 2, 3), [0, 6, 13]);
    assert_eq!(uniform_starts(20, 4, 2, 1), [6]);
    assert_eq!(uniform_starts(5, 4, 2, 2), [0, 0]);

    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // Independent strided clips lie inside the video when they fit.
    let spec = StridedPlanner::new(3, 4, (1, 3));
    for _ in 0..200 {
        for c in spec.plan(12, &mut rng).unwrap() {
            let s = c.meta.speed;
            assert!((1..=3).contains(&s));
            assert_eq!(
                c.indices,
                (0..4).map(|i| c.start + i * s).collect::<Vec<_>>()
            );
            assert!(*c.indices.last().unwrap() < 12);
        }
    }
    // A video shorter than the clip wraps around.
    let c = &StridedPlanner::new(1, 4, (2, 2)).plan(5, &mut rng).unwrap()[0];
    assert_eq!(c.indices, clip_indices(5, 4, 2, c.start));
    // Speed sorting: distinct speeds, reversed clips run backwards in time.
    let sp = SpeedSortPlanner::new(
        VariableSpeed {
            n_clips: 3,
            speeds: vec![1, 2, 3],
            reverse: true,
            distinct: SpeedDraw::Magnitude,
            label: SpeedLabel::Sort,
        },
        4,
    );
    let mut saw_reverse = false;
    for _ in 0..50 {
        let clips = sp.plan(40, &mut rng).unwrap();
        let mut speeds: Vec<_> = clips.iter().map(|c| c.meta.speed).collect();
        speeds.sort();
        assert_eq!(speeds, [1, 2, 3]);
        for c in &clips {
            let mut fwd = clip_indices(40, 4, c.meta.speed, c.start);
            if c.meta.reverse {
                fwd.reverse();
                saw_reverse = true;
            }
            assert_eq!(c.indices, fwd);
        }
    }
    assert!(saw_reverse);
    // Same seed, same plan.
    let a = sp
        .plan(40, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let b = sp
        .plan(40, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    assert_eq!(a, b);
}
