//! [`Collective`] over MPI (feature `mpi`): the `mpi` crate on the system's MPI library
//! (Open MPI or MPICH), started by `mpirun -np N qattn train …`.
//!
//! MPI is initialised on a dedicated communication thread (`MPI_THREAD_FUNNELED`: that thread
//! is the only one that ever calls MPI). The trainer's thread hands it buckets through a
//! channel and gets a [`Pending`] back at once, so a reduction runs while the trainer packs
//! the next bucket or does other work; `wait` blocks for the result.
//!
//! **Nodes.** For hierarchical all-reduce the ranks are grouped by node with
//! `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)` (ranks that share memory), or, when
//! `QATTN_RANKS_PER_NODE=k` is set, as consecutive blocks of k ranks (to exercise and measure
//! the two-level path on one machine). A bucket is reduced to each node's first rank, those
//! ranks all-reduce it, and each broadcasts the result inside its node.
//!
//! **Failures.** A rank that dies takes the job down: `mpirun` kills the remaining ranks
//! when one exits abnormally. Under a launcher that does not, a reduction that does not
//! complete within `QATTN_COLLECTIVE_TIMEOUT_S` seconds (default 600) fails with an error
//! naming the operation instead of hanging forever.

use crate::collective::{Collective, Pending};
use crate::error::{Error, Result};
use crate::launch::Launch;
use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest message of one MPI call, in elements: MPI counts are C `int`s.
const MAX_COUNT: usize = 1 << 30;

enum Request {
    AllReduce(Vec<f32>, Sender<Result<Vec<f32>>>),
    AllReduceHierarchical(Vec<f32>, Sender<Result<Vec<f32>>>),
    AllGather(Vec<u8>, Sender<Result<Vec<Vec<u8>>>>),
    Broadcast(Vec<u8>, Sender<Result<Vec<u8>>>),
    Barrier(Sender<Result<()>>),
}

/// An MPI process group (`MPI_COMM_WORLD`).
pub struct MpiCollective {
    rank: usize,
    size: usize,
    requests: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl MpiCollective {
    /// Initialises MPI on a new communication thread and checks that its rank and size agree
    /// with the launcher's environment (`launch`).
    pub fn init(launch: &Launch) -> Result<MpiCollective> {
        let timeout = collective_timeout()?;
        let (init_tx, init_rx) = mpsc::channel::<Result<(usize, usize)>>();
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("qattn-mpi".into())
            .spawn(move || communicate(init_tx, req_rx))
            .map_err(|e| Error::Distributed(format!("cannot start the MPI thread: {e}")))?;
        let (rank, size) = init_rx
            .recv()
            .map_err(|_| Error::Distributed("the MPI thread ended during MPI_Init".into()))??;
        if (rank, size) != (launch.rank, launch.world_size) {
            return Err(Error::Distributed(format!(
                "MPI says rank {rank} of {size}, the launcher's environment rank {} of {}",
                launch.rank, launch.world_size
            )));
        }
        Ok(MpiCollective {
            rank,
            size,
            requests: Mutex::new(Some(req_tx)),
            thread: Mutex::new(Some(thread)),
            timeout,
        })
    }

    fn send(&self, r: Request) -> Result<()> {
        let guard = self
            .requests
            .lock()
            .map_err(|_| Error::Distributed("MPI request channel poisoned".into()))?;
        guard
            .as_ref()
            .ok_or_else(|| Error::Distributed("the MPI group was shut down".into()))?
            .send(r)
            .map_err(|_| Error::Distributed("the MPI thread has stopped".into()))
    }
}

/// `QATTN_RANKS_PER_NODE`, if set.
fn ranks_per_node() -> Result<Option<i32>> {
    match std::env::var("QATTN_RANKS_PER_NODE") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<i32>() {
            Ok(k) if k >= 1 => Ok(Some(k)),
            _ => Err(Error::Distributed(format!(
                "QATTN_RANKS_PER_NODE={v:?} is not a positive integer"
            ))),
        },
    }
}

/// Every rank's bytes in rank order: the lengths first, then one variable-count all-gather.
fn all_gather(world: &mpi::topology::SimpleCommunicator, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
    let size = world.size() as usize;
    let too_big = |n: usize| {
        Error::Distributed(format!(
            "an all-gather of {n} bytes exceeds MPI's count limit of {} bytes",
            i32::MAX
        ))
    };
    let mine = i32::try_from(bytes.len()).map_err(|_| too_big(bytes.len()))?;
    let mut counts = vec![0i32; size];
    world.all_gather_into(&mine, &mut counts[..]);
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    if total > i32::MAX as usize {
        return Err(too_big(total));
    }
    let displs: Vec<i32> = counts
        .iter()
        .scan(0i32, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect();
    let mut buf = vec![0u8; total];
    {
        let mut part = mpi::datatype::PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
        world.all_gather_varcount_into(&bytes[..], &mut part);
    }
    Ok(counts
        .iter()
        .zip(&displs)
        .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
        .collect())
}

fn collective_timeout() -> Result<Duration> {
    match std::env::var("QATTN_COLLECTIVE_TIMEOUT_S") {
        Err(_) => Ok(Duration::from_secs(600)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(Error::Distributed(format!(
                "QATTN_COLLECTIVE_TIMEOUT_S={v:?} is not a positive number of seconds"
            ))),
        },
    }
}

/// The communication thread: initialises MPI, serves requests in order, finalises MPI when
/// the group is dropped.
fn communicate(init: Sender<Result<(usize, usize)>>, requests: Receiver<Request>) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        let _ = init.send(Err(Error::Distributed(
            "MPI was already initialised in this process".into(),
        )));
        return;
    };
    let world = universe.world();
    let size = world.size() as usize;
    let rank = world.rank();
    let node = match ranks_per_node() {
        Ok(Some(k)) => world
            .split_by_color(mpi::topology::Color::with_value(rank / k))
            .expect("every rank has a color"),
        Ok(None) => world.split_shared(rank),
        Err(e) => {
            let _ = init.send(Err(e));
            return;
        }
    };
    let leaders = world.split_by_color(if node.rank() == 0 {
        mpi::topology::Color::with_value(0)
    } else {
        mpi::topology::Color::undefined()
    });
    let _ = init.send(Ok((rank as usize, size)));
    for r in requests {
        match r {
            Request::AllReduceHierarchical(send, reply) => {
                let n = send.len();
                let node_root = node.process_at_rank(0);
                let mut sum = vec![0.0f32; n];
                for (i, s) in send.chunks(MAX_COUNT).enumerate() {
                    let at = i * MAX_COUNT;
                    if node.rank() == 0 {
                        node_root.reduce_into_root(
                            s,
                            &mut sum[at..at + s.len()],
                            SystemOperation::sum(),
                        );
                    } else {
                        node_root.reduce_into(s, SystemOperation::sum());
                    }
                }
                if let Some(l) = &leaders {
                    let mut total = vec![0.0f32; n];
                    for (s, t) in sum.chunks(MAX_COUNT).zip(total.chunks_mut(MAX_COUNT)) {
                        l.all_reduce_into(s, t, SystemOperation::sum());
                    }
                    sum = total;
                }
                for chunk in sum.chunks_mut(MAX_COUNT) {
                    node_root.broadcast_into(chunk);
                }
                let n = size as f32;
                sum.iter_mut().for_each(|x| *x /= n);
                let _ = reply.send(Ok(sum));
            }
            Request::AllGather(bytes, reply) => {
                let _ = reply.send(all_gather(&world, bytes));
            }
            Request::AllReduce(send, reply) => {
                let mut recv = vec![0.0f32; send.len()];
                for (s, r) in send.chunks(MAX_COUNT).zip(recv.chunks_mut(MAX_COUNT)) {
                    world.all_reduce_into(s, r, SystemOperation::sum());
                }
                let n = size as f32;
                recv.iter_mut().for_each(|x| *x /= n);
                let _ = reply.send(Ok(recv));
            }
            Request::Broadcast(mut bytes, reply) => {
                let root = world.process_at_rank(0);
                let mut len = bytes.len() as u64;
                root.broadcast_into(&mut len);
                bytes.resize(len as usize, 0);
                for chunk in bytes.chunks_mut(MAX_COUNT) {
                    root.broadcast_into(chunk);
                }
                let _ = reply.send(Ok(bytes));
            }
            Request::Barrier(reply) => {
                world.barrier();
                let _ = reply.send(Ok(()));
            }
        }
    }
    // Free the split communicators while MPI is alive; dropping the universe then calls
    // MPI_Finalize.
    drop(leaders);
    drop(node);
    drop(universe);
}

struct Waiting<T> {
    rx: Receiver<Result<T>>,
    what: &'static str,
    timeout: Duration,
}

impl<T> Waiting<T> {
    fn get(self) -> Result<T> {
        match self.rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Distributed(format!(
                "{} did not complete within {:.0} s: another rank has probably failed or \
                 stopped (QATTN_COLLECTIVE_TIMEOUT_S sets the limit)",
                self.what,
                self.timeout.as_secs_f64()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Distributed(format!(
                "the MPI thread stopped during {}",
                self.what
            ))),
        }
    }
}

impl Pending for Waiting<Vec<f32>> {
    fn wait(self: Box<Self>) -> Result<Vec<f32>> {
        (*self).get()
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::AllReduce(bucket, tx))?;
        Ok(Box::new(Waiting {
            rx,
            what: "an all-reduce of gradients",
            timeout: self.timeout,
        }))
    }
    fn barrier(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Barrier(tx))?;
        Waiting {
            rx,
            what: "a barrier",
            timeout: self.timeout,
        }
        .get()
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Broadcast(bytes, tx))?;
        Waiting {
            rx,
            what: "a broadcast from rank 0",
            timeout: self.timeout,
        }
        .get()
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::AllGather(bytes, tx))?;
        Waiting {
            rx,
            what: "an all-gather",
            timeout: self.timeout,
        }
        .get()
    }
    fn all_reduce_mean_hierarchical(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::AllReduceHierarchical(bucket, tx))?;
        Ok(Box::new(Waiting {
            rx,
            what: "a hierarchical all-reduce of gradients",
            timeout: self.timeout,
        }))
    }
    fn describe(&self) -> String {
        format!("MPI rank {} of {}", self.rank, self.size)
    }
}

impl Drop for MpiCollective {
    /// Closes the request channel so the communication thread finalises MPI, and waits for it.
    fn drop(&mut self) {
        if let Ok(mut g) = self.requests.lock() {
            g.take();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(h) = t.take()
        {
            let _ = h.join();
        }
    }
}
