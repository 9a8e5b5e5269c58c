//! Gradient averaging across workers, shaped for NCCL / MPI backends.
//!
//! The trainer flattens its gradients into buckets of at most [`BUCKET_ELEMS`] values (in
//! parameter order, so every rank builds identical buckets), starts an all-reduce per bucket,
//! and waits on the handles before the optimiser step. A backend that overlaps communication
//! with the backward pass can start buckets as soon as they fill; the trait allows that
//! because [`Collective::all_reduce_mean`] returns a handle instead of blocking.
//!
//! Backends: [`SingleProcess`] (world size 1, the mean of one contribution is itself) and,
//! with the `mpi` feature, [`crate::mpi::MpiCollective`] over the system's MPI library (one
//! communication thread per process, so reductions overlap the caller's work). How a process
//! finds its group is [`crate::launch`]'s business.

use crate::error::Result;

/// Values per gradient bucket: 25 MiB of f32, PyTorch DDP's default bucket size
/// (`bucket_cap_mb = 25`), so a large model's reduction starts in pieces.
pub const BUCKET_ELEMS: usize = 25 * 1024 * 1024 / 4;

/// A pending all-reduce; `wait` returns the reduced bucket.
pub trait Pending: Send {
    /// Blocks until the reduction is complete and returns the averaged values.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

/// A process group.
pub trait Collective: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Starts averaging `bucket` across all ranks (element-wise mean). Every rank must call
    /// this with buckets of the same length in the same order.
    fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>>;
    /// Blocks until every rank reaches this point.
    fn barrier(&self) -> Result<()>;
    /// Sends rank 0's `bytes` to every rank and returns them (other ranks' `bytes` are
    /// ignored; pass an empty vector). Every rank must call it at the same point.
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>>;
    /// Every rank's `bytes`, in rank order (lengths may differ). Blocking.
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>>;
    /// [`Collective::all_reduce_mean`] in two levels: reduce inside each node, all-reduce
    /// across nodes, broadcast inside each node. Backends without a notion of nodes reduce
    /// in one level.
    fn all_reduce_mean_hierarchical(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        self.all_reduce_mean(bucket)
    }
    /// A short description for logs, e.g. `single process` or `MPI rank 1 of 4`.
    fn describe(&self) -> String {
        format!("rank {} of {}", self.rank(), self.world_size())
    }
    /// Whether this rank writes checkpoints and logs (rank 0).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// A shared group is a group: lets a caller keep its own handle to the group it gives a
/// trainer (for instance to decide how to exit when training fails).
impl<C: Collective + ?Sized> Collective for std::sync::Arc<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        (**self).all_reduce_mean(bucket)
    }
    fn barrier(&self) -> Result<()> {
        (**self).barrier()
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        (**self).broadcast(bytes)
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        (**self).all_gather(bytes)
    }
    fn all_reduce_mean_hierarchical(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        (**self).all_reduce_mean_hierarchical(bucket)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// One process: nothing to exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

struct Ready(Vec<f32>);

impl Pending for Ready {
    fn wait(self: Box<Self>) -> Result<Vec<f32>> {
        Ok(self.0)
    }
}

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
        Ok(Box::new(Ready(bucket)))
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(bytes)
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes])
    }
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// Rank 0's `values` on every rank (others pass anything, e.g. an empty slice).
pub fn broadcast_f32(c: &dyn Collective, values: &[f32]) -> Result<Vec<f32>> {
    let bytes = if c.is_main() {
        values.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        Vec::new()
    };
    let got = c.broadcast(bytes)?;
    if got.len() % 4 != 0 {
        return Err(crate::error::Error::Training(format!(
            "broadcast of f32 values delivered {} bytes, not a multiple of 4",
            got.len()
        )));
    }
    Ok(got
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The contiguous share `lo..hi` of `n` items that `rank` of `world` takes: shares differ in
/// size by at most one, and rank r's share precedes rank r+1's, so the shards of a batch,
/// concatenated in rank order, are the batch.
pub fn shard(n: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    (n * rank / world)..(n * (rank + 1) / world)
}

/// Averages per-parameter gradients through `c`: packs them into buckets of at most
/// `bucket_elems` values, starts every bucket's all-reduce, then unpacks the results in place.
pub fn average_gradients(
    c: &dyn Collective,
    grads: &mut [Vec<f32>],
    bucket_elems: usize,
) -> Result<()> {
    average_gradients_with(c, grads, bucket_elems, false)
}

/// [`average_gradients`], in two levels when `hierarchical`
/// ([`Collective::all_reduce_mean_hierarchical`]).
pub fn average_gradients_with(
    c: &dyn Collective,
    grads: &mut [Vec<f32>],
    bucket_elems: usize,
    hierarchical: bool,
) -> Result<()> {
    if c.world_size() == 1 {
        return Ok(());
    }
    let bucket_elems = bucket_elems.max(1);
    // (parameter, offset, len) pieces of each bucket.
    let mut plans: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new()];
    let mut fill = 0usize;
    for (p, g) in grads.iter().enumerate() {
        let mut off = 0;
        while off < g.len() {
            if fill == bucket_elems {
                plans.push(Vec::new());
                fill = 0;
            }
            let take = (g.len() - off).min(bucket_elems - fill);
            plans.last_mut().expect("non-empty").push((p, off, take));
            off += take;
            fill += take;
        }
    }
    let mut pending = Vec::with_capacity(plans.len());
    for plan in &plans {
        let mut bucket = Vec::with_capacity(plan.iter().map(|x| x.2).sum());
        for &(p, off, len) in plan {
            bucket.extend_from_slice(&grads[p][off..off + len]);
        }
        pending.push(if hierarchical {
            c.all_reduce_mean_hierarchical(bucket)?
        } else {
            c.all_reduce_mean(bucket)?
        });
    }
    for (plan, handle) in plans.iter().zip(pending) {
        let values = handle.wait()?;
        let mut at = 0;
        for &(p, off, len) in plan {
            grads[p][off..off + len].copy_from_slice(&values[at..at + len]);
            at += len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake two-rank group whose "other rank" contributes fixed values: checks bucketing
    /// and unpacking without a network.
    struct FakePair {
        other: Mutex<Vec<f32>>,
    }
    impl Collective for FakePair {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_mean(&self, bucket: Vec<f32>) -> Result<Box<dyn Pending>> {
            let mut other = self.other.lock().unwrap();
            let theirs: Vec<f32> = other.drain(..bucket.len()).collect();
            let mean = bucket
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a + b) / 2.0)
                .collect();
            Ok(Box::new(Ready(mean)))
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
            Ok(bytes)
        }
        fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            Ok(vec![bytes])
        }
    }

    #[test]
    fn shards_cover_a_batch_in_rank_order() {
        for n in 0..20 {
            for world in 1..6 {
                let parts: Vec<_> = (0..world).map(|r| shard(n, world, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} world {world}: {sizes:?}");
            }
        }
        assert_eq!(shard(16, 2, 1), 8..16);
    }

    #[test]
    fn broadcast_f32_round_trips_through_bytes() {
        let v = [1.5f32, -0.0, f32::MAX, 3.25e-7];
        assert_eq!(broadcast_f32(&SingleProcess, &v).unwrap(), v.to_vec());
    }

    #[test]
    fn buckets_split_and_reassemble_parameters() {
        let mut grads = vec![vec![1.0f32, 2.0, 3.0], vec![4.0], vec![5.0, 6.0]];
        let c = FakePair {
            other: Mutex::new(vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        };
        average_gradients(&c, &mut grads, 2).unwrap();
        assert_eq!(grads, vec![vec![2.0, 3.0, 4.0], vec![5.0], vec![6.0, 7.0]]);
        let mut single = vec![vec![1.0f32]];
        average_gradients(&SingleProcess, &mut single, 2).unwrap();
        assert_eq!(single, vec![vec![1.0]]);
        assert!(SingleProcess.is_main());
    }
}
