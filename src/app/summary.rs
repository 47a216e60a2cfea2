//! The parameter summary `vssl recipe --summary` appends to a resolved recipe: builds
//! the recipe's backbone on the CPU only to count its parameters.

use candle_core::Device;

use crate::backbone::arch::{arch_name, classifier_prefix};
use crate::nn::VarStore;
use crate::recipe::Recipe;
use crate::Result;

/// `# backbone r3d_18: 33,166,272 parameters (33,371,472 with a 400-class fc)`: the
/// count without the classifier, then with the recipe's classifier (or, when the recipe
/// builds none, with a Kinetics-400 one for comparison with published numbers).
pub fn backbone_summary(r: &Recipe) -> Result<String> {
    let mut cfg = r.backbone.clone();
    let classes = cfg.num_classes.take();
    let vs = VarStore::new(&Device::Cpu, 0);
    let net = crate::backbone::build(&cfg, &vs, r.data.frames)?;
    let base = net.param_count();
    let n = classes.unwrap_or(400);
    let with_fc = base + net.out_channels() * n + n;
    let fc = classifier_prefix(cfg.arch);
    let which = if classes.is_some() { "its" } else { "a" };
    Ok(format!(
        "# backbone {}: {} parameters ({} with {which} {n}-class {fc})",
        arch_name(cfg.arch),
        thousands(base),
        thousands(with_fc)
    ))
}

/// `33166272` -> `33,166,272`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
