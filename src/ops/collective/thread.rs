//! [`ThreadGroup`]: the ranks are threads of one process, meeting at a barrier over
//! shared slots (the data-parallel tests' stand-in for a real communicator).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::Collective;
use crate::{Error, Result};

/// The CPU stand-in: the ranks are threads of this process. A rank whose handle is
/// dropped (its thread returned or failed) makes every later collective of the
/// others an error naming it, instead of a hang.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Default)]
struct State {
    slots: Vec<Vec<f64>>,
    arrived: usize,
    generation: u64,
    left: Option<usize>,
}

impl ThreadGroup {
    /// Handles for ranks `0..world`, to be moved one to each thread.
    pub fn new(world: usize) -> Result<Vec<ThreadGroup>> {
        if world == 0 {
            return Err(Error::BadInput(
                "a process group needs at least one rank".into(),
            ));
        }
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                slots: vec![Vec::new(); world],
                ..State::default()
            }),
            turn: Condvar::new(),
        });
        Ok((0..world)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every rank arrived; an error if one left the group.
    fn barrier(&self) -> Result<()> {
        let mut st = self.lock();
        let gone = |left: usize| {
            Error::Internal(format!(
                "data parallel: rank {left} left the group; rank {} stops too",
                self.rank
            ))
        };
        if let Some(l) = st.left {
            return Err(gone(l));
        }
        st.arrived += 1;
        if st.arrived == self.shared.world {
            st.arrived = 0;
            st.generation += 1;
            self.shared.turn.notify_all();
            return Ok(());
        }
        let gen = st.generation;
        while st.generation == gen && st.left.is_none() {
            st = self.shared.turn.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match (st.generation == gen, st.left) {
            (true, Some(l)) => Err(gone(l)),
            _ => Ok(()),
        }
    }

    /// Puts `buf` in this rank's slot, then waits for the others'.
    fn publish(&self, buf: impl Iterator<Item = f64>) -> Result<()> {
        {
            let mut st = self.lock();
            let slot = &mut st.slots[self.rank];
            slot.clear();
            slot.extend(buf);
        }
        self.barrier()
    }

    /// Sums the slots in rank order into `out(i, sum)`, checking every rank gave
    /// `len` values; then waits until every rank has read them.
    fn reduce(&self, len: usize, mut out: impl FnMut(usize, f64)) -> Result<()> {
        {
            let st = self.lock();
            if let Some(r) = st.slots.iter().position(|s| s.len() != len) {
                return Err(Error::Internal(format!(
                    "data parallel: all-reduce of {len} values on rank {} but {} on rank {r}",
                    self.rank,
                    st.slots[r].len()
                )));
            }
            for i in 0..len {
                out(i, st.slots.iter().fold(0.0, |acc, s| acc + s[i]));
            }
        }
        // Nobody overwrites a slot before every rank has read them all.
        self.barrier()
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.left.get_or_insert(self.rank);
        self.shared.turn.notify_all();
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    /// Sums in double precision, rounded once to f32.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.publish(buf.iter().map(|&v| v as f64))?;
        self.reduce(buf.len(), |i, s| buf[i] = s as f32)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.publish(buf.iter().copied())?;
        self.reduce(buf.len(), |i, s| buf[i] = s)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.shared.world {
            return Err(Error::Internal(format!(
                "data parallel: broadcast from rank {root} in a group of {}",
                self.shared.world
            )));
        }
        let mine: &[f32] = if self.rank == root { buf } else { &[] };
        self.publish(mine.iter().map(|&v| v as f64))?;
        {
            let st = self.lock();
            let src = &st.slots[root];
            if src.len() != buf.len() {
                return Err(Error::Internal(format!(
                    "data parallel: broadcast of {} values from rank {root} into {} on rank {}",
                    src.len(),
                    buf.len(),
                    self.rank
                )));
            }
            for (b, s) in buf.iter_mut().zip(src) {
                *b = *s as f32;
            }
        }
        self.barrier()
    }
}
