//! The built-in synthetic video dataset: the default dataset, so every recipe runs with
//! nothing downloaded.
//!
//! Videos are generated procedurally and deterministically from `(config, split, index)`,
//! in memory and fast enough (well under a millisecond for a 32-frame 32x32 clip) to be
//! regenerated inside the training loop instead of being cached.
//!
//! # Classes: labelled by motion
//!
//! Each video shows one large foreground object (a square, disc, triangle or bar with a
//! random colour, size and position) doing one of eight motions. The classes come in
//! four *time-reverse pairs*, adjacent in [`CLASS_NAMES`] (`2k` and `2k + 1`):
//!
//! | class | motion | reverse |
//! |-------|--------|---------|
//! | `MoveLeft` / `MoveRight` | translate horizontally | each other |
//! | `MoveUp` / `MoveDown` | translate vertically | each other |
//! | `RotateClockwise` / `RotateCounterclockwise` | spin about its centre | each other |
//! | `Grow` / `Shrink` | radius changes linearly | each other |
//!
//! The reverse relation holds *literally* for everything but the downward flow of the
//! world (drift, falling distractors and the object's sink): the generator draws a scene from the video's
//! seed, renders the motion of the even class `2k`, and a video of class `2k + 1` is the
//! very same rendering with its frames in reverse order, while the world keeps flowing
//! down (see [`Synthetic::render`]). Every nuisance is drawn from its own random stream,
//! identically for every class, so it carries no information about the label. Any single frame (or the bag of all frames) of a `2k` video is thus
//! distributed exactly like one of a `2k + 1` video: only temporal order separates the
//! pairs, which is what a video representation should capture.
//!
//! # Nuisances (so the task is not trivial)
//!
//! - a smooth random background texture per video (two octaves of periodic value noise
//!   between two random colours), or a flat random colour when `texture` is off;
//! - camera drift (`drift`): the background scrolls slowly down the screen, with a small
//!   random sideways component, independently of the label;
//! - `1..=distractors` small distractor objects that fall down the screen (speed `fall`,
//!   re-entering at the top), or with `fall = 0` move in random straight lines bouncing
//!   off the borders;
//! - global brightness: a random gain per video plus a slow random sinusoidal flicker;
//! - i.i.d. per-pixel noise of standard deviation `noise` (in 0..255 units).
//!
//! To make rotations visible the foreground object carries a dark band on one side of
//! its own frame (so even the disc has an orientation).
//!
//! # Canonical "up" comes only from motion
//!
//! Nothing static tells up from down: the background texture is isotropic and objects
//! are not shaded. The only cues are dynamic: the background scrolls down, the
//! distractors fall, and the foreground object slowly sinks (`sink`) on top of its
//! class motion. They belong to the world, not to the action, so they are rendered
//! in playback time in every video, also when the foreground motion is reversed (the
//! `2k + 1` classes): they carry no information about the class (their frames and their
//! motion are distributed alike in every class),
//! but a rotation-prediction pretext can only solve its task by perceiving motion, as
//! 3DRotNet intends for real video, where things fall down.
//!
//! # Rendering
//!
//! Objects are drawn from signed distance functions with a one-pixel linear ramp at the
//! edge (analytic anti-aliasing), and the background is sampled bilinearly at the
//! sub-pixel camera offset, so motions well below one pixel per frame are visible.

mod scene;

use scene::Scene;

use crate::data::{Split, Video};
use crate::seed::mix;
use crate::{Error, Result};

/// Number of classes.
pub const NUM_CLASSES: usize = 8;

/// Class names (CamelCase, as in UCF101). `[2k]` and `[2k + 1]` are time-reverses of each other.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "MoveLeft",
    "MoveRight",
    "MoveUp",
    "MoveDown",
    "RotateClockwise",
    "RotateCounterclockwise",
    "Grow",
    "Shrink",
];

/// The time-reverse class pairs `(2k, 2k + 1)`.
pub fn reverse_pairs() -> Vec<(u32, u32)> {
    (0..NUM_CLASSES as u32 / 2)
        .map(|k| (2 * k, 2 * k + 1))
        .collect()
}

/// The class whose videos look like `class` played backwards.
pub fn reverse_class(class: u32) -> u32 {
    class ^ 1
}

/// Configuration of the synthetic dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Dataset seed: every video is a pure function of `(config, split, index)`.
    pub seed: u64,
    /// Number of training videos (labels balanced over the classes).
    pub train_videos: usize,
    /// Number of test videos.
    pub test_videos: usize,
    /// Frames per video.
    pub video_frames: usize,
    /// Frame height and width in pixels (frames are square).
    pub size: usize,
    /// Maximum number of distractor objects; each video has `1..=distractors` (0: none).
    pub distractors: usize,
    /// Slow random camera drift of the background.
    pub drift: bool,
    /// Smooth random background texture (otherwise a flat random colour).
    pub texture: bool,
    /// Per-pixel noise standard deviation, in 0..255 units.
    pub noise: f32,
    /// Falling speed of the distractors, in pixels/frame at 32-pixel frames (scaled with
    /// `size`); 0 makes them move in random straight lines instead.
    pub fall: f32,
    /// The foreground object also sinks down the screen at this speed (pixels/frame at
    /// 32-pixel frames), in playback time in every class, like things under gravity.
    pub sink: f32,
    /// Foreground shapes, drawn uniformly per video; distractors take the first two
    /// (the first only, if there is one). The default is the built-in world's set.
    pub shapes: Vec<Shape>,
    /// Multiplies the foreground object's size (1: radius 14-20% of the frame side).
    pub object_scale: f32,
    /// Multiplies the speed of every class motion (translation, spin, growth).
    pub motion_scale: f32,
    /// Background pattern when `texture` is on.
    pub pattern: Pattern,
}

/// A foreground (or distractor) shape. The first four make the built-in world; the
/// others exist so a second, differently built world can test that a recipe is not
/// tuned to the first one's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Disc,
    Square,
    Triangle,
    Bar,
    Ring,
    Cross,
    Diamond,
    Ellipse,
}

/// The background texture's pattern (periodic, so the drifting camera wraps around).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Smooth two-octave value noise (isotropic).
    Noise,
    /// A sinusoidal grating with a random whole number of periods across the frame on
    /// each axis.
    Stripes,
    /// Soft checks: the product of two such gratings.
    Checks,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            train_videos: 480,
            test_videos: 240,
            video_frames: 32,
            size: 32,
            distractors: 2,
            drift: true,
            texture: true,
            noise: 6.0,
            fall: 0.4,
            sink: 0.4,
            shapes: vec![Shape::Disc, Shape::Square, Shape::Triangle, Shape::Bar],
            object_scale: 1.0,
            motion_scale: 1.0,
            pattern: Pattern::Noise,
        }
    }
}

impl SyntheticConfig {
    /// Checks the ranges; on failure returns `(key, message)`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if !(16..=1024).contains(&self.size) {
            return err("size", format!("must be in 16..=1024, got {}", self.size));
        }
        if !(8..=100_000).contains(&self.video_frames) {
            return err(
                "video_frames",
                format!("must be in 8..=100000, got {}", self.video_frames),
            );
        }
        if self.train_videos < NUM_CLASSES {
            return err(
                "train_videos",
                format!(
                    "must be at least the number of classes ({NUM_CLASSES}), got {}",
                    self.train_videos
                ),
            );
        }
        if self.test_videos < NUM_CLASSES {
            return err(
                "test_videos",
                format!(
                    "must be at least the number of classes ({NUM_CLASSES}), got {}",
                    self.test_videos
                ),
            );
        }
        if self.distractors > 16 {
            return err(
                "distractors",
                format!("must be at most 16, got {}", self.distractors),
            );
        }
        if !self.noise.is_finite() || !(0.0..=64.0).contains(&self.noise) {
            return err("noise", format!("must be in 0..=64, got {}", self.noise));
        }
        if !self.sink.is_finite() || !(0.0..=0.4).contains(&self.sink) {
            return err("sink", format!("must be in 0..=0.4, got {}", self.sink));
        }
        if !self.fall.is_finite() || !(0.0..=4.0).contains(&self.fall) {
            return err("fall", format!("must be in 0..=4, got {}", self.fall));
        }
        if self.shapes.is_empty() {
            return err("shapes", "must name at least one shape".into());
        }
        if !self.object_scale.is_finite() || !(0.25..=1.5).contains(&self.object_scale) {
            return err(
                "object_scale",
                format!("must be in 0.25..=1.5, got {}", self.object_scale),
            );
        }
        if !self.motion_scale.is_finite() || !(0.25..=4.0).contains(&self.motion_scale) {
            return err(
                "motion_scale",
                format!("must be in 0.25..=4, got {}", self.motion_scale),
            );
        }
        Ok(())
    }
}

/// The synthetic dataset. Cheap to construct; videos are generated on demand.
#[derive(Debug, Clone)]
pub struct Synthetic {
    cfg: SyntheticConfig,
}

impl Synthetic {
    /// Validates the configuration.
    pub fn new(cfg: SyntheticConfig) -> Result<Self> {
        cfg.validate().map_err(|(key, message)| {
            Error::BadInput(format!("synthetic dataset: `{key}` {message}"))
        })?;
        Ok(Synthetic { cfg })
    }

    /// The configuration this dataset was built from.
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    pub fn num_classes(&self) -> usize {
        NUM_CLASSES
    }

    /// Number of videos in `split`.
    pub fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.cfg.train_videos,
            Split::Test => self.cfg.test_videos,
        }
    }

    /// Label of video `index`: `index % classes`, so every class has `len / classes` videos
    /// (plus one for the first `len % classes` classes). An index past the split's end
    /// is an error.
    pub fn label(&self, split: Split, index: usize) -> Result<u32> {
        self.check_index(split, index)?;
        Ok((index % NUM_CLASSES) as u32)
    }

    /// The seed of video `index`. `mix` is a bijection and the split is the low bit of its
    /// input, so train and test seeds are disjoint.
    pub fn video_seed(&self, split: Split, index: usize) -> u64 {
        let bit = match split {
            Split::Train => 0,
            Split::Test => 1,
        };
        mix(mix(self.cfg.seed) ^ (((index as u64) << 1) | bit))
    }

    /// Video `index` of `split`; deterministic in `(config, split, index)`. An index
    /// past the split's end is an error.
    pub fn video(&self, split: Split, index: usize) -> Result<Video> {
        let label = self.label(split, index)?;
        self.render(self.video_seed(split, index), label)
    }

    /// Renders the scene drawn from `seed` with the motion of `class`. The scene (object,
    /// background, drift, distractors, lighting, noise) depends on `seed` only; the odd class
    /// of each pair is the even class's rendering played backwards, except that the
    /// world keeps flowing down: without distractors and drift, `render(s, 2k + 1)` is exactly
    /// `render(s, 2k)` with frames in reverse order. A class outside `0..NUM_CLASSES`
    /// is an error.
    pub fn render(&self, seed: u64, class: u32) -> Result<Video> {
        if class as usize >= NUM_CLASSES {
            return Err(Error::BadInput(format!(
                "synthetic dataset: class {class} out of range (0..{NUM_CLASSES})"
            )));
        }
        let scene = Scene::draw(&self.cfg, seed, class / 2);
        let (s, t_n) = (self.cfg.size, self.cfg.video_frames);
        let n = s * s * 3;
        let mut data = vec![0u8; t_n * n];
        let mut buf = vec![0f32; n];
        let mut cols = vec![(0usize, 0usize); s];
        let reverse = class % 2 == 1;
        for t in 0..t_n {
            let slot = if reverse { t_n - 1 - t } else { t };
            scene.render_frame(t, slot, &mut buf, &mut cols);
            scene.quantize(t, &buf, &mut data[slot * n..(slot + 1) * n]);
        }
        Ok(Video {
            frames: t_n,
            height: s,
            width: s,
            data,
        })
    }

    fn check_index(&self, split: Split, index: usize) -> Result<()> {
        let len = self.len(split);
        if index >= len {
            return Err(Error::BadInput(format!(
                "synthetic dataset: {split:?} index {index} out of range (len {len})"
            )));
        }
        Ok(())
    }
}
