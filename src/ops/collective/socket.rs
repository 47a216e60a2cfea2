//! [`SocketGroup`]: ranks in separate processes, on one machine or several, joined
//! over TCP through a hub at rank 0. Rank 0 listens on a free port and writes its
//! address to a file in a directory every rank sees (the run directory, on a shared
//! file system across nodes); the others read it and connect. Every reduction is
//! summed at the hub in f64, in rank order, as each rank's buffer arrives (one
//! accumulator whatever the number of ranks), rounded once and sent back: every rank
//! gets the same bits, the same bits [`super::ThreadGroup`] gives. Buffers travel in
//! their own type (f32 gradients as f32).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Collective;
use crate::{Error, Result};

/// A length that no buffer has: the hub's "this collective failed" message.
const FAILED: u64 = u64::MAX;

/// One rank of a group of processes.
pub struct SocketGroup {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1.. in rank order; the others: rank 0's.
    links: Mutex<Vec<TcpStream>>,
}

fn gone(rank: usize, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("data parallel: rank {rank} left the group ({e})"))
}

/// What travels: f32 (gradients, weights) or f64 (statistics), little-endian,
/// after a u64 length.
trait Wire: Copy {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Self;
    fn wide(self) -> f64;
    fn narrow(v: f64) -> Self;
}

macro_rules! wire {
    ($t:ty, $n:literal) => {
        impl Wire for $t {
            const SIZE: usize = $n;
            fn put(self, out: &mut Vec<u8>) {
                out.extend(self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap_or([0; $n]))
            }
            fn wide(self) -> f64 {
                self as f64
            }
            fn narrow(v: f64) -> Self {
                v as $t
            }
        }
    };
}
wire!(f32, 4);
wire!(f64, 8);

fn send<T: Wire>(s: &mut TcpStream, v: &[T]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + T::SIZE * v.len());
    bytes.extend((v.len() as u64).to_le_bytes());
    for x in v {
        x.put(&mut bytes);
    }
    s.write_all(&bytes)
}

fn send_failed(s: &mut TcpStream) {
    let _ = s.write_all(&FAILED.to_le_bytes());
}

/// A buffer, or `None` when the sender reported a failed collective.
fn recv<T: Wire>(s: &mut TcpStream) -> std::io::Result<Option<Vec<T>>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len == FAILED {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize * T::SIZE];
    s.read_exact(&mut bytes)?;
    Ok(Some(bytes.chunks_exact(T::SIZE).map(T::get).collect()))
}

/// What the hub makes of the ranks' buffers.
#[derive(Clone, Copy)]
enum Combine {
    /// Their element-wise sum, added in f64 in rank order and rounded once.
    Sum,
    /// This rank's buffer (the others send nothing).
    Pick(usize),
}

impl SocketGroup {
    /// Joins group `token` (the same on every rank, unique per run) as `rank` of
    /// `world`, meeting in `dir`; waits up to `timeout` for the others.
    pub fn join(
        dir: &Path,
        token: &str,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(Error::BadInput(format!(
                "rank {rank} of a group of {world}"
            )));
        }
        let addr = dir.join(format!("hub-{}.addr", file_token(token)));
        let deadline = Instant::now() + timeout;
        let links = if world == 1 {
            Vec::new()
        } else if rank == 0 {
            Self::host(dir, &addr, token, world, deadline)?
        } else {
            vec![Self::connect(&addr, token, rank, world, deadline)?]
        };
        Ok(Self {
            rank,
            world,
            links: Mutex::new(links),
        })
    }

    fn host(
        dir: &Path,
        addr: &Path,
        token: &str,
        world: usize,
        deadline: Instant,
    ) -> Result<Vec<TcpStream>> {
        fn io(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
            move |e| Error::io(p, e)
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let listener = TcpListener::bind(("0.0.0.0", 0)).map_err(io(dir))?;
        let port = listener.local_addr().map_err(io(dir))?.port();
        let tmp = addr.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {port}\n", hostname())).map_err(io(&tmp))?;
        std::fs::rename(&tmp, addr).map_err(io(addr))?;
        listener.set_nonblocking(true).map_err(io(dir))?;
        let mut joined: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while joined.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(io(dir))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(io(dir))?;
                    // A stray or stale connection is dropped, not an error.
                    if let Some(r) = Self::handshake(&mut s, token, world) {
                        if joined[r - 1].is_none() {
                            s.set_read_timeout(None).map_err(io(dir))?;
                            let _ = s.set_nodelay(true);
                            joined[r - 1] = Some(s);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (1..world)
                            .filter(|r| joined[r - 1].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(Error::BadInput(format!(
                            "data parallel: rank(s) {} did not join through {} in time",
                            missing.join(", "),
                            addr.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(Error::io(dir, e)),
            }
        }
        let _ = std::fs::remove_file(addr);
        Ok(joined.into_iter().flatten().collect())
    }

    /// The rank a joining stream announces with the right token, if it does.
    fn handshake(s: &mut TcpStream, token: &str, world: usize) -> Option<usize> {
        let mut head = [0u8; 16];
        s.read_exact(&mut head).ok()?;
        let len = u64::from_le_bytes(head[..8].try_into().ok()?) as usize;
        let rank = u64::from_le_bytes(head[8..].try_into().ok()?) as usize;
        if len != token.len() || !(1..world).contains(&rank) {
            return None;
        }
        let mut t = vec![0u8; len];
        s.read_exact(&mut t).ok()?;
        (t == token.as_bytes()).then_some(rank)
    }

    fn connect(
        addr: &Path,
        token: &str,
        rank: usize,
        world: usize,
        deadline: Instant,
    ) -> Result<TcpStream> {
        let late = || {
            Error::BadInput(format!(
                "data parallel: rank {rank} of {world} found no hub at {} in time (rank 0 did not start)",
                addr.display()
            ))
        };
        loop {
            if let Ok(text) = std::fs::read_to_string(addr) {
                let mut it = text.split_whitespace();
                if let (Some(host), Some(port)) =
                    (it.next(), it.next().and_then(|p| p.parse::<u16>().ok()))
                {
                    let tried = TcpStream::connect((host, port))
                        .or_else(|_| TcpStream::connect(("127.0.0.1", port)));
                    if let Ok(mut s) = tried {
                        let mut hello = Vec::new();
                        hello.extend((token.len() as u64).to_le_bytes());
                        hello.extend((rank as u64).to_le_bytes());
                        hello.extend(token.as_bytes());
                        s.write_all(&hello).map_err(|e| gone(0, e))?;
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(late());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every rank's buffer to the hub (rank order), combined as it arrives (one
    /// accumulator, whatever the number of ranks), the result sent back to all.
    fn through_hub<T: Wire>(&self, buf: &mut [T], how: Combine) -> Result<()> {
        let mut links = self.links();
        let n = buf.len();
        if self.rank != 0 {
            let s = &mut links[0];
            let mine: &[T] = match how {
                Combine::Pick(r) if r != self.rank => &[],
                _ => buf,
            };
            send(s, mine).map_err(|e| gone(0, e))?;
            return match recv::<T>(s).map_err(|e| gone(0, e))? {
                Some(v) if v.len() == n => {
                    buf.copy_from_slice(&v);
                    Ok(())
                }
                Some(v) => Err(Error::Internal(format!(
                    "data parallel: rank {} got {} values back for {n}",
                    self.rank,
                    v.len()
                ))),
                None => Err(Error::Internal(format!(
                    "data parallel: a collective failed at rank 0; rank {} stops too",
                    self.rank
                ))),
            };
        }
        let mut acc = match how {
            Combine::Sum => vec![0.0f64; n],
            Combine::Pick(_) => Vec::new(),
        };
        let mut picked: Option<Vec<T>> = None;
        let mut absorb = |rank: usize, v: &[T]| -> Result<()> {
            match how {
                Combine::Sum if v.len() != n => Err(Error::Internal(format!(
                    "data parallel: all-reduce of {n} values on rank 0 but {} on rank {rank}",
                    v.len()
                ))),
                Combine::Sum => {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x.wide();
                    }
                    Ok(())
                }
                Combine::Pick(r) if r == rank => {
                    picked = Some(v.to_vec());
                    Ok(())
                }
                Combine::Pick(_) => Ok(()),
            }
        };
        let fail = |links: &mut Vec<TcpStream>, e: Error| -> Result<()> {
            links.iter_mut().for_each(send_failed);
            Err(e)
        };
        if let Err(e) = absorb(0, buf) {
            return fail(&mut links, e);
        }
        for r in 1..self.world {
            let got = match recv::<T>(&mut links[r - 1]) {
                Ok(Some(v)) => absorb(r, &v),
                Ok(None) | Err(_) => Err(gone(r, "its connection closed")),
            };
            if let Err(e) = got {
                return fail(&mut links, e);
            }
        }
        let out: Vec<T> = match how {
            Combine::Sum => acc.into_iter().map(T::narrow).collect(),
            Combine::Pick(r) => match picked {
                Some(v) if v.len() == n => v,
                _ => {
                    let e = Error::Internal(format!(
                        "data parallel: broadcast from rank {r} does not fit {n} values"
                    ));
                    return fail(&mut links, e);
                }
            },
        };
        for (i, s) in links.iter_mut().enumerate() {
            send(s, &out).map_err(|e| gone(i + 1, e))?;
        }
        buf.copy_from_slice(&out);
        Ok(())
    }
}

impl Collective for SocketGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.through_hub(buf, Combine::Sum)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.through_hub(buf, Combine::Sum)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::Internal(format!(
                "data parallel: broadcast from rank {root} in a group of {}",
                self.world
            )));
        }
        self.through_hub(buf, Combine::Pick(root))
    }
}

/// This machine's name, for the other ranks to connect to.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(h)) if !h.is_empty() => h.to_string(),
        _ => "127.0.0.1".into(),
    }
}

/// `token` as a file-name part: letters, digits and `-` kept, anything else `_`.
pub(super) fn file_token(token: &str) -> String {
    token
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Three ranks on threads of this process, over real sockets: the same sums and
    /// broadcasts as the thread group, and a rank that goes away is an error.
    #[test]
    fn socket_ranks_sum_and_broadcast_like_the_thread_group() {
        let dir = tempfile::tempdir().unwrap();
        let dir = Arc::new(dir.path().to_path_buf());
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let g =
                        SocketGroup::join(&dir, "t-1", rank, 3, Duration::from_secs(20)).unwrap();
                    let r = rank as f32;
                    let mut a = vec![r, 10.0 * r, 1e8 * (r - 1.0), 1.0];
                    g.all_reduce_sum(&mut a).unwrap();
                    let mut b = vec![r; 2];
                    g.broadcast(&mut b, 2).unwrap();
                    let mut c = vec![0.0; 1 + rank];
                    let mismatch = g.all_reduce_sum(&mut c).is_err();
                    (a, b, mismatch)
                })
            })
            .collect();
        for h in handles {
            let (a, b, mismatch) = h.join().unwrap();
            assert_eq!(a, vec![3.0, 30.0, 0.0, 3.0]);
            assert_eq!(b, vec![2.0, 2.0]);
            assert!(
                mismatch,
                "buffers of different lengths are an error on every rank"
            );
        }
        // Rank 1 joins and leaves: rank 0's next collective fails instead of hanging.
        let d2 = dir.clone();
        let leaver = std::thread::spawn(move || {
            drop(SocketGroup::join(&d2, "t-2", 1, 2, Duration::from_secs(20)).unwrap());
        });
        let g = SocketGroup::join(&dir, "t-2", 0, 2, Duration::from_secs(20)).unwrap();
        leaver.join().unwrap();
        let e = g.all_reduce_sum(&mut [1.0]).unwrap_err().to_string();
        assert!(e.contains("rank 1 left the group"), "{e}");
        // Nobody to meet: a clear error after the timeout.
        let e = SocketGroup::join(&dir, "t-3", 1, 2, Duration::from_millis(100))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("found no hub"), "{e}");
    }
}
