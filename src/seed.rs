//! Counter-based seeding and stable hashing shared by every layer.
//!
//! Reproducibility rests on a few small functions that must never change their
//! output: [`mix`] derives independent seeds from counters, [`hash_str`] turns names
//! into seeds and [`fnv1a`] sweep points into ids (std's hasher is not stable across
//! builds), and [`normal`] draws a standard normal with Box-Muller (no `rand_distr`
//! dependency). They live in one leaf module so that parameter initialisation, clip
//! sampling, synthetic data and sweep hashing all draw the same numbers from the
//! same code.

use rand::Rng;

/// 64-bit mix (splitmix64 finaliser) used to derive independent seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a: stable across builds and platforms (std's hasher is not).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Stable hash of a string, for per-name seeds (parameter initialisation, cache keys,
/// fine-tuning heads). FNV-1a's offset basis but multiplier `0x1000_0000_01b3`, not
/// FNV's prime `0x100_0000_01b3`: NOT [`fnv1a`]. Every saved model's initial weights
/// depend on it, so it stays as it is.
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    })
}

/// One standard-normal draw by Box-Muller (two uniform draws, the cosine branch).
pub fn normal<R: Rng>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
