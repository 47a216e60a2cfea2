//! The Slurm executor: how a sweep leaves one machine. Every point's run directory
//! gets its resolved recipe (and `point.toml`), and one sbatch job-array script maps
//! `SLURM_ARRAY_TASK_ID` to a run directory, where it trains (resuming after a
//! checkpoint, skipping a finished model) and runs the missing evaluations.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{overrides_text, Sweep};
use crate::run_dir;
use crate::{Error, Result};

/// Where the script went and what `sbatch` said.
#[derive(Debug, Clone)]
pub struct SlurmJob {
    pub script: PathBuf,
    /// `sbatch`'s output when submitted.
    pub submitted: Option<String>,
}

/// Single-quotes a string for bash.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The job-array script for a sweep. `exe` is the default `vssl` binary (the
/// `VSSL` environment variable overrides it), `workdir` the folder relative paths
/// start from (`VSSL_WORKDIR` overrides it), `device` the `--device` of each task.
pub fn script(sweep: &Sweep, exe: &Path, workdir: &Path, device: &str) -> String {
    let n = sweep.points.len();
    let c = &sweep.spec.slurm;
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("#SBATCH --job-name=vssl-{}\n", sweep.spec.name));
    s.push_str(&format!("#SBATCH --array=0-{}\n", n.saturating_sub(1)));
    if let Some(p) = &c.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    // More than one GPU or node per task: one rank per GPU, started by srun.
    let per_node = c.gpus.unwrap_or(1).max(1);
    let nodes = c.nodes.unwrap_or(1).max(1);
    let ranks = per_node * nodes;
    if ranks > 1 {
        s.push_str(&format!("#SBATCH --nodes={nodes}\n"));
        s.push_str(&format!("#SBATCH --ntasks-per-node={per_node}\n"));
        if let Some(g) = c.gpus {
            s.push_str(&format!("#SBATCH --gpus-per-node={g}\n"));
        }
    } else if let Some(g) = c.gpus {
        s.push_str(&format!("#SBATCH --gpus={g}\n"));
    }
    if let Some(x) = c.cpus {
        s.push_str(&format!("#SBATCH --cpus-per-task={x}\n"));
    }
    if let Some(t) = &c.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(m) = &c.mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    let logs = sweep.dir.join("slurm");
    let logs = if logs.is_absolute() {
        logs
    } else {
        workdir.join(logs)
    };
    s.push_str(&format!(
        "#SBATCH --output={}/%x-%A_%a.log\n",
        logs.display()
    ));
    s.push_str(&format!(
        "# Written by `vssl sweep {} --executor slurm`: one array task per point.\n",
        sweep.spec.file.display()
    ));
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "cd \"${{VSSL_WORKDIR:-{}}}\"\n",
        workdir.display()
    ));
    s.push_str(&format!("VSSL=\"${{VSSL:-{}}}\"\n", exe.display()));
    for line in &c.setup {
        s.push_str(line);
        s.push('\n');
    }
    let protocols: Vec<&str> = sweep.spec.eval.iter().map(|p| p.name()).collect();
    s.push_str(&format!(
        r#"
# run_point DIR PRETRAIN(1|0): train (resume after a checkpoint, skip when finished),
# then the evaluations whose results are missing.
run_point() {{
  local dir=$1 pretrain=$2 suffix="" random=""
  if [ "$pretrain" = 1 ] && [ ! -f "$dir/{model}" ]; then
    local resume=""
    if compgen -G "$dir/{checkpoints}/{ckpt_glob}" >/dev/null; then
      resume=--resume
    else
      rm -f "$dir/{metrics}"
    fi
    {launch}"$VSSL" --device {device} train "$dir/{recipe}" --out "$dir" $resume{ranks}
  fi
  [ "$pretrain" = 1 ] || {{ suffix=-random; random=--random-init; }}
  local todo=()
  for p in {protocols}; do
    [ -f "$dir/{eval}/$p$suffix.json" ] || todo+=("$p")
  done
  if [ ${{#todo[@]}} -gt 0 ]; then
    "$VSSL" --device {device} eval "$dir" --protocol "$(IFS=,; echo "${{todo[*]}}")" $random
  fi
}}

case "${{SLURM_ARRAY_TASK_ID:?run this script with sbatch (or set SLURM_ARRAY_TASK_ID)}}" in
"#,
        device = sh(device),
        launch = if ranks > 1 { "srun " } else { "" },
        ranks = if ranks > 1 { " --ranks slurm" } else { "" },
        protocols = protocols.join(" "),
        model = run_dir::MODEL_FILE,
        checkpoints = run_dir::CHECKPOINTS_DIR,
        ckpt_glob = run_dir::checkpoint_name(0).replace("00000000", "*"),
        metrics = run_dir::METRICS_FILE,
        recipe = run_dir::RECIPE_FILE,
        eval = run_dir::EVAL_DIR,
    ));
    for p in &sweep.points {
        s.push_str(&format!(
            "  {}) run_point {} {} ;;  # {}\n",
            p.index,
            sh(&p.dir.display().to_string()),
            u8::from(p.pretrain),
            overrides_text(p).replace('\n', " ")
        ));
    }
    s.push_str("  *) echo \"no point $SLURM_ARRAY_TASK_ID in this sweep\" >&2; exit 2 ;;\nesac\n");
    s
}

/// Writes every point's recipe and the script `<sweep>/slurm/<name>.sbatch`;
/// with `submit`, runs `sbatch` on it (an error if `sbatch` is not on PATH).
pub fn write(
    sweep: &Sweep,
    exe: &Path,
    workdir: &Path,
    device: &str,
    submit: bool,
) -> Result<SlurmJob> {
    for p in &sweep.points {
        sweep.prepare(p)?;
    }
    let dir = sweep.dir.join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{}.sbatch", sweep.spec.name));
    std::fs::write(&path, script(sweep, exe, workdir, device)).map_err(|e| Error::io(&path, e))?;
    let submitted = if submit {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("sbatch").is_file()))
            .unwrap_or(false);
        if !found {
            return Err(Error::BadInput(format!(
                "--submit: `sbatch` is not on PATH; the script is at {} (submit it where Slurm runs)",
                path.display()
            )));
        }
        let out = Command::new("sbatch")
            .arg(&path)
            .output()
            .map_err(|e| Error::io("sbatch", e))?;
        if !out.status.success() {
            return Err(Error::BadInput(format!(
                "sbatch {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        None
    };
    Ok(SlurmJob {
        script: path,
        submitted,
    })
}
