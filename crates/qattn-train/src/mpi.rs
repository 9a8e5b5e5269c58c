//! [`Collective`] over MPI (feature `mpi`): the `mpi` crate on the system's MPI library
//! (Open MPI or MPICH), started by `mpirun -np N qattn train …`.
//!
//! MPI is initialised on a dedicated communication thread (`MPI_THREAD_FUNNELED`: that thread
//! is the only one that ever calls MPI). The trainer's thread hands it buckets through a
//! channel and gets a [`Pending`] back at once, so a reduction runs while the trainer packs
//! the next bucket or does other work; `wait` blocks for the result.
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
    let _ = init.send(Ok((world.rank() as usize, size)));
    for r in requests {
        match r {
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
    // Dropping the universe calls MPI_Finalize.
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
