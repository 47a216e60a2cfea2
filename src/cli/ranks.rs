//! `vssl train --ranks N`: data-parallel training in N processes, one rank each.
//!
//! The launcher starts the ranks as copies of this command with `VSSL_RANK`,
//! `VSSL_WORLD`, `VSSL_LOCAL_RANK` and `VSSL_RANKS_ID` set, waits for them, and stops
//! the others when one fails. Under Slurm, `srun vssl train ... --ranks slurm` makes
//! each task a rank from `SLURM_PROCID`, `SLURM_NTASKS` and `SLURM_LOCALID`. The ranks
//! meet through an address file in the run directory ([`SocketGroup`]), so on
//! several nodes that directory must be on a shared file system. On GPUs rank `r`
//! of a node computes on `cuda:<local rank>`.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vssl::ops::collective::SocketGroup;
use vssl::run_dir::RunDir;
use vssl::train::parallel::Parallel;

/// How long the ranks wait for each other to start (`VSSL_RANKS_TIMEOUT` seconds
/// overrides it).
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place in a data-parallel run.
#[derive(Debug, Clone)]
pub struct Rank {
    pub rank: usize,
    pub world: usize,
    /// The rank's index on its node (its GPU).
    pub local: usize,
    /// The same on every rank of one run, different between runs.
    pub token: String,
}

fn var(name: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.trim().parse().map_err(|_| {
            vssl::Error::BadInput(format!("{name}={v:?} is not a number"))
        })?)),
        Err(_) => Ok(None),
    }
}

fn need(name: &str) -> anyhow::Result<usize> {
    var(name)?.ok_or_else(|| {
        vssl::Error::BadInput(format!("--ranks slurm: {name} is not set (run under srun)")).into()
    })
}

/// The rank the launcher made this process (`VSSL_RANK` set), if any.
pub fn from_launcher() -> anyhow::Result<Option<Rank>> {
    let Some(rank) = var("VSSL_RANK")? else {
        return Ok(None);
    };
    let world = var("VSSL_WORLD")?.unwrap_or(1);
    let local = var("VSSL_LOCAL_RANK")?.unwrap_or(rank);
    let token = std::env::var("VSSL_RANKS_ID").unwrap_or_else(|_| "vssl".into());
    check(Rank {
        rank,
        world,
        local,
        token,
    })
}

/// The rank of this Slurm task (`--ranks slurm`).
pub fn from_slurm() -> anyhow::Result<Option<Rank>> {
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let step = std::env::var("SLURM_STEP_ID").unwrap_or_default();
    check(Rank {
        rank: need("SLURM_PROCID")?,
        world: need("SLURM_NTASKS")?,
        local: need("SLURM_LOCALID")?,
        token: format!("slurm-{job}-{step}"),
    })
}

fn check(r: Rank) -> anyhow::Result<Option<Rank>> {
    if r.world == 0 || r.rank >= r.world {
        return Err(vssl::Error::BadInput(format!("rank {} of {} ranks", r.rank, r.world)).into());
    }
    Ok(Some(r))
}

/// Joins the run's group in `run`'s meeting directory. On a CUDA device of a build
/// with the `nccl` feature the gradients are summed by NCCL (unless `VSSL_NCCL=0`),
/// otherwise through the socket group's host memory.
pub fn join(
    me: &Rank,
    run: &RunDir,
    sync_bn: bool,
    dev: &candle_core::Device,
) -> anyhow::Result<Parallel> {
    let timeout =
        var("VSSL_RANKS_TIMEOUT")?.map_or(JOIN_TIMEOUT, |s| Duration::from_secs(s as u64));
    let group = SocketGroup::join(&run.ranks_dir(), &me.token, me.rank, me.world, timeout)?;
    let group: Arc<dyn vssl::ops::collective::Collective> =
        if dev.is_cuda() && std::env::var("VSSL_NCCL").map_or(true, |v| v != "0") {
            device_group(group, me, run, dev)?
        } else {
            Arc::new(group)
        };
    if me.rank == 0 {
        let _ = std::fs::remove_dir(run.ranks_dir());
    }
    Ok(Parallel { group, sync_bn })
}

/// The group for ranks on GPUs: NCCL where this build has it.
fn device_group(
    group: SocketGroup,
    me: &Rank,
    run: &RunDir,
    dev: &candle_core::Device,
) -> anyhow::Result<Arc<dyn vssl::ops::collective::Collective>> {
    #[cfg(feature = "nccl")]
    {
        let g = vssl::ops::collective::NcclGroup::new(group, &run.ranks_dir(), &me.token, dev)?;
        Ok(Arc::new(g))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (run, dev);
        if me.rank == 0 {
            tracing::info!(
                "this build has no NCCL (feature `nccl`): gradients travel through host memory"
            );
        }
        Ok(Arc::new(group))
    }
}

/// Starts `n` ranks running this command line and waits for them; the first that
/// fails stops the others, and its exit code (2 for bad input) is this one's.
pub fn launch(n: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("--ranks: cannot find this program")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    tracing::info!("--ranks {n}: starting {n} processes");
    let mut kids: Vec<Child> = Vec::with_capacity(n);
    for r in 0..n {
        let mut c = Command::new(&exe);
        c.args(&args)
            .env("VSSL_RANK", r.to_string())
            .env("VSSL_WORLD", n.to_string())
            .env("VSSL_LOCAL_RANK", r.to_string())
            .env("VSSL_RANKS_ID", &token);
        if r > 0 {
            // Rank 0 reports; the others only warn.
            c.stdout(Stdio::null());
            if std::env::var_os("VSSL_LOG").is_none() {
                c.env("VSSL_LOG", "warn");
            }
        }
        match c.spawn() {
            Ok(k) => kids.push(k),
            Err(e) => {
                stop(&mut kids);
                return Err(anyhow::anyhow!("--ranks: cannot start rank {r}: {e}"));
            }
        }
    }
    loop {
        let mut running = false;
        for r in 0..kids.len() {
            match kids[r].try_wait()? {
                Some(st) if !st.success() => {
                    stop(&mut kids);
                    let msg =
                        format!("rank {r} of {n} failed ({st}); the other ranks were stopped");
                    return Err(match st.code() {
                        Some(2) => vssl::Error::BadInput(msg).into(),
                        _ => anyhow::anyhow!(msg),
                    });
                }
                Some(_) => {}
                None => running = true,
            }
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(kids: &mut [Child]) {
    for k in kids.iter_mut() {
        let _ = k.kill();
    }
    for k in kids.iter_mut() {
        let _ = k.wait();
    }
}
