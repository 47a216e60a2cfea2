//! Which conv3d algorithm runs: chosen per layer from its geometry, or forced for A/B
//! timing with `VSSL_CONV_ALGO=direct|winograd|blocked`.
//!
//! Why a module: the three CPU paths (blocked vol2col+gemm, AVX-512 direct, AVX-512
//! Winograd) each have their own `applies`; this is the one place that reads the
//! switches and knows the measured preference between them, so the kernels stay
//! ignorant of each other. The choice depends only on the geometry and the
//! environment, never on timings taken at run time, so a run stays reproducible.

use std::sync::OnceLock;

use super::geometry::Geom;

/// A forced algorithm (`VSSL_CONV_ALGO`), or `Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algo {
    /// Per layer by geometry (the default).
    Auto,
    /// The direct kernels wherever they apply, never Winograd.
    Direct,
    /// Winograd wherever it applies (3x3x3 or 1x3x3, stride 1), else as `Auto`.
    Winograd,
    /// The blocked vol2col+gemm path only (what a CPU without AVX-512 runs).
    Blocked,
}

/// The forced algorithm, read once. `VSSL_CONV_DIRECT=0` (the older switch) means
/// `blocked`. An unknown value is reported once and ignored.
pub(super) fn forced() -> Algo {
    static ALGO: OnceLock<Algo> = OnceLock::new();
    *ALGO.get_or_init(|| {
        if std::env::var("VSSL_CONV_DIRECT").is_ok_and(|v| v == "0") {
            return Algo::Blocked;
        }
        match std::env::var("VSSL_CONV_ALGO") {
            Err(_) => Algo::Auto,
            Ok(v) => match parse(&v) {
                Some(a) => a,
                None => {
                    tracing::warn!(
                        "VSSL_CONV_ALGO={v:?} is not one of auto, direct, winograd, blocked; using auto"
                    );
                    Algo::Auto
                }
            },
        }
    })
}

/// `VSSL_CONV_ALGO`'s values.
pub(super) fn parse(v: &str) -> Option<Algo> {
    Some(match v {
        "" | "auto" => Algo::Auto,
        "direct" => Algo::Direct,
        "winograd" => Algo::Winograd,
        "blocked" => Algo::Blocked,
        _ => return None,
    })
}

/// AVX-512F present and not hidden with `VSSL_CPU_NO_AVX512=1` (which makes this
/// CPU behave like one without it, so the fallback can be tested here).
pub(super) fn avx512() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let hidden = std::env::var("VSSL_CPU_NO_AVX512").is_ok_and(|v| v == "1");
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && !hidden
    })
}

/// Whether the AVX-512 direct kernels may run.
pub(super) fn direct_allowed() -> bool {
    avx512() && forced() != Algo::Blocked
}

/// Whether the direct kernel, where it applies, should run `g`'s forward: not on a
/// strided layer with at least 64 input channels and 512 output positions per sample,
/// where vol2col+gemm measured faster (MC3-18 at 112 px, batch 2: the 1x3x3 stride-2
/// convolutions of layers 2-4 took 24/28/19 ms against 33/32/23; R3D-18's layer-2
/// 3x3x3 stride-2 convolution at 64 px, batch 8: 23.5 against 30.4). On smaller maps
/// (R3D-18's layers 3-4 at 64 px) the direct kernel stays ahead by about 1 ms, and
/// the stem (3 input channels) by a third. Forcing `direct` keeps it everywhere.
pub(super) fn direct_forward(g: &Geom) -> bool {
    let strided = g.stride != [1; 3];
    let positions: usize = g.out.iter().product();
    forced() == Algo::Direct || !(strided && g.c >= 64 && positions >= 512)
}

/// Whether `g`'s forward goes to the Winograd kernels.
pub(super) fn winograd(g: &Geom) -> bool {
    allowed(g, prefers_winograd(g) || prefers_winograd_deep(g))
}

/// Whether `g`'s input gradient goes to the Winograd kernels: where the forward
/// does, and on deep 3x3x3 layers down to 2 frames, where the direct input-gradient
/// kernel is weaker than its forward. R3D-18's layer 3 at 64 px (256 channels,
/// 2x8x8, batch 8): 39 ms against the direct kernel's 59 (3 calls), while the
/// forward stays direct (32 against Winograd's 42).
pub(super) fn winograd_input(g: &Geom) -> bool {
    let deep2 = frames_ok(g, 2) && g.c >= 16 && g.o >= 16 && 2 * tiles(g) >= g.c.max(g.o);
    allowed(g, prefers_winograd(g) || deep2)
}

/// Whether `g`'s weight gradient goes to the Winograd kernels.
pub(super) fn winograd_weight(g: &Geom) -> bool {
    allowed(g, prefers_winograd(g))
}

/// Whether Winograd runs on `g`, given the automatic preference.
fn allowed(g: &Geom, auto: bool) -> bool {
    if !avx512() || !super::winograd::fits(g) {
        return false;
    }
    match forced() {
        Algo::Winograd => true,
        Algo::Auto => auto,
        Algo::Direct | Algo::Blocked => false,
    }
}

/// The measured preference (`experiments/perf-cpu.md`, `vssl bench model` per-layer
/// rows with `VSSL_CONV_ALGO=direct` and `=winograd`): Winograd wins where the layer
/// has at least two tiles per input channel, so its transformed weight (64·C·O
/// floats for 3x3x3, 16·C·O for 1x3x3, streamed once per block of tiles) is
/// amortised, and, for 3x3x3, at least two frames (a one-frame map wastes half of
/// every tile, while the direct kernel skips the padded taps). R3D-18: layers 1 and
/// 2 yes, 3 and 4 no, at 64 and 112 px. MC3-18's 1x3x3 layers at 112 px: weight
/// gradient on layers 2 (78 ms against the direct kernel's 117, 3 calls) and 3 (a
/// tie with the blocked kernel, 86-94 against 89), not 4 (130 against 90).
fn prefers_winograd(g: &Geom) -> bool {
    frames_ok(g, 2) && g.c >= 16 && g.o >= 16 && tiles(g) >= 2 * g.c.max(g.o)
}

/// The forward and input gradient also win on deeper layers with fewer tiles per
/// channel once the map has at least 4 frames (two temporal tiles) and half a tile
/// per channel: R3D-18's layer 3 at 112 px (256 channels, 4x14x14, batch 2) measured
/// 43 ms against the direct kernel's 55 (forward, 3 calls) and 43 against 59 (input
/// gradient). At 2 frames (layer 3 at 64 px, layer 4) the direct kernel stays faster,
/// and the weight gradient of these layers stays on the blocked kernel (Winograd
/// measured 83 ms against 56). MC3-18's 1x3x3 layer 4 (512 channels, 16x7x7, batch
/// 2): forward 80-100 ms against 109, input gradient 67-82 against 113.
fn prefers_winograd_deep(g: &Geom) -> bool {
    frames_ok(g, 4) && g.c >= 16 && g.o >= 16 && 2 * tiles(g) >= g.c.max(g.o)
}

/// A 3x3x3 layer's map has at least `least` frames; a 1x3x3 layer's tiles are one
/// frame deep and waste none.
fn frames_ok(g: &Geom, least: usize) -> bool {
    g.k[0] == 1 || g.out[0] >= least
}

/// Output tiles of the whole batch: 2x2x2, or 1x2x2 for a 1x3x3 kernel.
fn tiles(g: &Geom) -> usize {
    let t = if g.k[0] == 1 {
        g.out[0]
    } else {
        g.out[0].div_ceil(2)
    };
    g.n * t * g.out[1].div_ceil(2) * g.out[2].div_ceil(2)
}
