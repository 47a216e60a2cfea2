//! TemporalContrast: TCLR (METHODS.md section 3). Every video gives one sparse clip
//! and `dense_clips` dense clips aligned with its parts, in two augmented views
//! (layout and batch order: [`SparseDenseSpec`]). One shared projection MLP maps
//! pooled features to unit embeddings, and three losses from [`crate::loss`] act on
//! them: instance (IC, across videos), local-local (LL, among the dense clips of one
//! video) and global-local (GL, the sparse clip's time slices against the dense clips).
//!
//! Memory: all clips of the batch (sparse and dense, both views) go through the
//! backbone as one batch `[B * views * (1 + dense), 3, T, H, W]`, so activations are
//! held once and batch norm sees every clip.

use candle_core::{Tensor, D};

use super::{Batch, ClipSpec, Pretext, Sampling, SparseDenseSpec, StepOutput};
use crate::backbone::Backbone;
use crate::loss::{global_local, l2_normalize, nt_xent_masked, PairMasks};
use crate::nn::{Linear, VarStore};
use crate::ops::batch_norm3d::BatchNorm3d;
use crate::recipe::{LlReduction, TemporalContrastCfg};
use crate::{Error, Result};

/// Augmented views of every clip (TCLR uses two).
pub const VIEWS: usize = 2;

/// Number of time slices GL compares for a feature map with `t_out` time steps and
/// `dense` dense clips: `min(t_out, dense)`, and the larger must be a multiple of it
/// (paper: T' = 4 = dense, one slice per dense clip). When `t_out > dense`, adjacent
/// time steps are averaged; when `dense > t_out`, adjacent dense clips are averaged, so
/// slice `i` always covers the same frames as the dense group `i`.
pub fn gl_slices(t_out: usize, dense: usize) -> Result<usize> {
    let (lo, hi) = (t_out.min(dense), t_out.max(dense));
    if lo == 0 || !hi.is_multiple_of(lo) {
        return Err(Error::BadInput(format!(
            "global-local loss: the backbone keeps T' = {t_out} time steps, which cannot be \
             aligned with method.dense_clips = {dense} (one must be a multiple of the other; \
             change data.frames, backbone.temporal_dilation_last_stage or set method.w_gl = 0)"
        )));
    }
    Ok(lo)
}

/// Averages `[N, C, T]` over `groups` equal runs of consecutive time steps:
/// `[N, groups, C]`, entry `i` the mean of steps `i*T/groups .. (i+1)*T/groups`.
pub fn time_groups(x: &Tensor, groups: usize) -> Result<Tensor> {
    let (n, c, t) = x.dims3()?;
    if groups == 0 || !t.is_multiple_of(groups) {
        return Err(Error::Internal(format!(
            "time_groups: {t} steps into {groups} groups"
        )));
    }
    Ok(x.reshape((n, c, groups, t / groups))?
        .mean(3)?
        .transpose(1, 2)?
        .contiguous()?)
}

/// TCLR's projection head: `C -> hidden`, BN, ReLU, `-> out`, BN, L2 normalise.
/// Batch norm is [`BatchNorm3d`] on `[N, C, 1, 1, 1]`, i.e. BatchNorm1d.
pub struct ProjectionMlp {
    fc1: Linear,
    bn1: BatchNorm3d,
    fc2: Linear,
    bn2: BatchNorm3d,
}

impl ProjectionMlp {
    pub fn new(vs: &VarStore, input: usize, hidden: usize, out: usize) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&vs.pp("fc1"), input, hidden)?,
            bn1: BatchNorm3d::new(&vs.pp("bn1"), hidden)?,
            fc2: Linear::new(&vs.pp("fc2"), hidden, out)?,
            bn2: BatchNorm3d::new(&vs.pp("bn2"), out)?,
        })
    }

    /// Unit embeddings `[N, out]` of features `[N, C]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let bn1d = |bn: &BatchNorm3d, x: &Tensor| -> Result<Tensor> {
            let (n, c) = x.dims2()?;
            Ok(bn
                .forward_t(&x.reshape((n, c, 1, 1, 1))?, train)?
                .reshape((n, c))?)
        };
        let h = bn1d(&self.bn1, &self.fc1.forward(x)?)?.relu()?;
        let z = bn1d(&self.bn2, &self.fc2.forward(&h)?)?;
        l2_normalize(&z)
    }
}

/// The three TCLR losses of one batch; `None` where the weight is 0 (not computed).
#[derive(Debug, Clone, Default)]
pub struct TclrLosses {
    pub ic: Option<Tensor>,
    pub ll: Option<Tensor>,
    pub gl: Option<Tensor>,
}

/// Unit embeddings of one batch of `B` videos.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Sparse clips, `[B * views, D]`, rows ordered (video, view).
    pub sparse: Tensor,
    /// Dense clips, `[B * views * dense, D]`, rows ordered (video, view, clip).
    pub dense: Tensor,
    /// GL pairs (only when GL is on): sparse time slices and the dense embeddings they
    /// must match, both `[B * views, S, D]` (rows ordered (video, view)), slice `i` <->
    /// entry `i`. GL pairs every view of the slices with every view of the dense clips.
    pub gl: Option<(Tensor, Tensor)>,
}

/// The temporal-contrast family: the clip layout, the projection and the weights;
/// the losses have defaults built from [`crate::loss`].
pub trait TemporalContrast {
    fn cfg(&self) -> &TemporalContrastCfg;

    /// Clip layout of one video.
    fn layout(&self) -> SparseDenseSpec {
        SparseDenseSpec {
            stride: self.cfg().sparse_stride,
            dense: self.cfg().dense_clips,
            views: VIEWS,
        }
    }

    /// IC, LL and GL of the embeddings of `videos` videos.
    fn losses(&self, e: &Embeddings, videos: usize) -> Result<TclrLosses> {
        let cfg = self.cfg();
        let (n, v, tau) = (cfg.dense_clips, VIEWS, cfg.temperature);
        let dev = e.sparse.device();
        // Row -> video and row -> dense position, for rows ordered (video, view, clip).
        let dense_video: Vec<usize> = (0..videos * v * n).map(|r| r / (v * n)).collect();
        let dense_part: Vec<usize> = (0..videos * v * n).map(|r| r % n).collect();
        let mut out = TclrLosses::default();
        if cfg.w_ic > 0.0 {
            let ids: Vec<usize> = (0..videos * v).map(|r| r / v).collect();
            let mut ic = nt_xent_masked(&e.sparse, &PairMasks::instance(&ids, dev)?, tau)?;
            if cfg.ic_dense {
                let m = PairMasks::instance(&dense_video, dev)?;
                ic = (ic + nt_xent_masked(&e.dense, &m, tau)?)?;
            }
            out.ic = Some(ic);
        }
        if cfg.w_ll > 0.0 {
            let m = PairMasks::within_group(&dense_video, &dense_part, dev)?;
            let ll = nt_xent_masked(&e.dense, &m, tau)?;
            // Every video has the same number of anchors: the row mean is the video mean.
            out.ll = Some(match cfg.ll_reduction {
                LlReduction::Mean => ll,
                LlReduction::Sum => (ll * videos as f64)?,
            });
        }
        if cfg.w_gl > 0.0 {
            let (slices, locals) = e
                .gl
                .as_ref()
                .ok_or_else(|| Error::Internal("GL is on but no slices were embedded".into()))?;
            // Every view of the slices against every view of the dense clips, as the
            // public code does (the crops differ, so no pixel shortcut), averaged.
            let (_, s, d) = slices.dims3()?;
            let slices = slices.reshape((videos, v, s, d))?;
            let locals = locals.reshape((videos, v, s, d))?;
            let mut gl: Option<Tensor> = None;
            for a in 0..v {
                for b in 0..v {
                    let term = global_local(
                        &slices.narrow(1, a, 1)?.squeeze(1)?,
                        &locals.narrow(1, b, 1)?.squeeze(1)?,
                        tau,
                    )?;
                    gl = Some(match gl {
                        Some(g) => (g + term)?,
                        None => term,
                    });
                }
            }
            let gl = gl.ok_or_else(|| Error::Internal("GL without views".into()))?;
            out.gl = Some((gl / (v * v) as f64)?);
        }
        Ok(out)
    }

    /// `w_ic * IC + w_ll * LL + w_gl * GL` over the losses that were computed.
    fn total(&self, l: &TclrLosses) -> Result<Tensor> {
        let c = self.cfg();
        let mut total: Option<Tensor> = None;
        for (w, t) in [(c.w_ic, &l.ic), (c.w_ll, &l.ll), (c.w_gl, &l.gl)] {
            if let Some(t) = t {
                let term = (t * w)?;
                total = Some(match total {
                    Some(a) => (a + term)?,
                    None => term,
                });
            }
        }
        total.ok_or_else(|| Error::Internal("all TCLR loss weights are 0".into()))
    }
}

/// TCLR with a shared projection MLP (`pretext.proj.*`).
pub struct Tclr {
    cfg: TemporalContrastCfg,
    frames: usize,
    backbone: Box<dyn Backbone>,
    proj: ProjectionMlp,
    head_vars: VarStore,
}

impl Tclr {
    pub fn new(
        cfg: &TemporalContrastCfg,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        let proj = ProjectionMlp::new(
            &head_vars.pp("proj"),
            backbone.out_channels(),
            cfg.proj_hidden,
            cfg.proj_dim,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            frames,
            backbone,
            proj,
            head_vars,
        })
    }

    /// Embeddings of a batch of `videos` videos in the [`SparseDenseSpec`] order.
    pub fn embed(&self, clips: &Tensor, videos: usize, train: bool) -> Result<Embeddings> {
        let sd = self.layout();
        let (n, v, k) = (sd.dense, sd.views, sd.clips());
        if clips.dim(0)? != videos * k {
            return Err(Error::BadInput(format!(
                "temporal contrast expects {k} clips per video: {videos} videos, {} clips",
                clips.dim(0)?
            )));
        }
        // One backbone pass over every clip; pool space only: [B*K, C, T'].
        let fmap = self.backbone.forward_t(clips, train)?;
        let (_, c, tp, _, _) = fmap.dims5()?;
        let st = fmap.mean(4)?.mean(3)?.reshape((videos, v, 1 + n, c, tp))?;
        let sparse_t = st.narrow(2, 0, 1)?.squeeze(2)?; // [B, V, C, T']
        let dense = st.narrow(2, 1, n)?.mean(D::Minus1)?; // [B, V, n, C]
        let mut rows = vec![
            sparse_t.mean(D::Minus1)?.reshape((videos * v, c))?,
            dense.reshape((videos * v * n, c))?,
        ];
        let s = if self.cfg.w_gl > 0.0 {
            let s = gl_slices(tp, n)?;
            let slices = time_groups(&sparse_t.reshape((videos * v, c, tp))?, s)?;
            rows.push(slices.reshape((videos * v * s, c))?);
            if s < n {
                // Several dense clips per slice: average their features.
                let groups = dense.reshape((videos, v, s, n / s, c))?.mean(3)?;
                rows.push(groups.reshape((videos * v * s, c))?);
            }
            Some(s)
        } else {
            None
        };
        // One projection call: the head's batch norm sees every row.
        let z = self.proj.forward_t(&Tensor::cat(&rows, 0)?, train)?;
        let d = z.dim(1)?;
        let (ns, nd) = (videos * v, videos * v * n);
        let sparse = z.narrow(0, 0, ns)?;
        let dense_z = z.narrow(0, ns, nd)?;
        let gl = match s {
            Some(s) => {
                let m = videos * v * s;
                let slices = z.narrow(0, ns + nd, m)?.reshape((videos * v, s, d))?;
                let locals = if s < n {
                    z.narrow(0, ns + nd + m, m)?
                } else {
                    dense_z.clone()
                };
                Some((slices, locals.reshape((videos * v, s, d))?))
            }
            None => None,
        };
        Ok(Embeddings {
            sparse,
            dense: dense_z,
            gl,
        })
    }
}

impl TemporalContrast for Tclr {
    fn cfg(&self) -> &TemporalContrastCfg {
        &self.cfg
    }
}

impl Pretext for Tclr {
    fn clip_spec(&self) -> ClipSpec {
        let sd = self.layout();
        ClipSpec {
            clips_per_video: sd.clips(),
            frames: self.frames,
            sampling: Sampling::SparseDense(sd),
        }
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let e = self.embed(&batch.clips, batch.videos, train)?;
        let l = self.losses(&e, batch.videos)?;
        let loss = self.total(&l)?;
        let mut scalars = Vec::new();
        for (name, t) in [("ic", &l.ic), ("ll", &l.ll), ("gl", &l.gl)] {
            if let Some(t) = t {
                scalars.push((
                    name,
                    t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
                ));
            }
        }
        Ok(StepOutput { loss, scalars })
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }
}
