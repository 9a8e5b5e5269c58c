//! How a process learns its place in a data-parallel group.
//!
//! A launcher starts N copies of the same command and tells each one, through environment
//! variables, its rank, the world size and its place on the node:
//!
//! | launcher | rank | world size | local rank | processes on this node |
//! |---|---|---|---|---|
//! | Open MPI `mpirun` | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OMPI_COMM_WORLD_LOCAL_SIZE` |
//! | MPICH / Hydra `mpiexec` | `PMI_RANK` | `PMI_SIZE` | `MPI_LOCALRANKID` | `MPI_LOCALNRANKS` |
//! | torchrun-style | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `LOCAL_WORLD_SIZE` |
//!
//! [`Launch::detect`] reads them (MPI first); with none set the process runs alone.
//! [`Launch::connect`] forms the group: [`SingleProcess`] for one process, MPI (feature
//! `mpi`) for an MPI launch. torchrun-style launches are meant for NCCL on GPUs, which this
//! build does not have yet; they are refused with an explanation rather than run as N
//! independent trainings.

use crate::collective::{Collective, SingleProcess};
use crate::error::{Error, Result};

/// Who started this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Started directly: one process.
    Single,
    /// `mpirun` / `mpiexec` (Open MPI or MPICH environment variables).
    Mpi,
    /// torchrun-style environment variables (`RANK`, `WORLD_SIZE`, …).
    Torchrun,
}

/// This process's place in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Who started the process.
    pub launcher: Launcher,
    /// 0-based rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_size: usize,
}

impl Launch {
    /// One process on its own.
    pub const SINGLE: Launch = Launch {
        launcher: Launcher::Single,
        rank: 0,
        world_size: 1,
        local_rank: 0,
        local_size: 1,
    };

    /// [`Launch::detect`] on this process's environment.
    pub fn from_env() -> Result<Launch> {
        Launch::detect(|k| std::env::var(k).ok())
    }

    /// Reads the launcher's variables through `get`. A malformed value, or a rank outside the
    /// world, is an error that names the variable.
    pub fn detect(get: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        const SCHEMES: [(Launcher, [&str; 4]); 3] = [
            (
                Launcher::Mpi,
                [
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                    "OMPI_COMM_WORLD_LOCAL_SIZE",
                ],
            ),
            (
                Launcher::Mpi,
                ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"],
            ),
            (
                Launcher::Torchrun,
                ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
            ),
        ];
        let num = |name: &str| -> Result<Option<usize>> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Distributed(format!(
                        "environment variable {name}={v:?} is not a non-negative integer"
                    ))
                }),
            }
        };
        for (launcher, [rank_var, size_var, local_rank_var, local_size_var]) in SCHEMES {
            let (Some(rank), Some(world_size)) = (num(rank_var)?, num(size_var)?) else {
                continue;
            };
            if world_size == 0 {
                return Err(Error::Distributed(format!("{size_var}=0: no processes")));
            }
            if rank >= world_size {
                return Err(Error::Distributed(format!(
                    "{rank_var}={rank} is not below {size_var}={world_size}"
                )));
            }
            // Without node-local variables, assume every process shares this node (the
            // conservative choice for sizing thread pools).
            let local_size = num(local_size_var)?.unwrap_or(world_size).max(1);
            let local_rank = num(local_rank_var)?.unwrap_or(rank % local_size);
            if local_rank >= local_size {
                return Err(Error::Distributed(format!(
                    "{local_rank_var}={local_rank} is not below {local_size_var}={local_size}"
                )));
            }
            return Ok(Launch {
                launcher,
                rank,
                world_size,
                local_rank,
                local_size,
            });
        }
        Ok(Launch::SINGLE)
    }

    /// Whether this process writes checkpoints, logs and outputs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// This process's share of `cores` (at least one thread), so that the processes on a node
    /// do not oversubscribe it.
    pub fn threads(&self, cores: usize) -> usize {
        (cores / self.local_size.max(1)).max(1)
    }

    /// Forms the process group. One process needs no library; an MPI launch of several
    /// processes needs the `mpi` feature; a torchrun-style launch of several processes needs
    /// the NCCL backend, which does not exist yet.
    pub fn connect(&self) -> Result<Box<dyn Collective>> {
        if self.world_size == 1 {
            return Ok(Box::new(SingleProcess));
        }
        match self.launcher {
            Launcher::Single => Ok(Box::new(SingleProcess)),
            Launcher::Mpi => connect_mpi(self),
            Launcher::Torchrun => Err(Error::Distributed(format!(
                "torchrun-style variables ask for {} processes (WORLD_SIZE); that launch is for \
                 NCCL on GPUs, which this build has no backend for. On CPUs start the processes \
                 with `mpirun -np {} qattn train …` from a build with `--features mpi`",
                self.world_size, self.world_size
            ))),
        }
    }
}

#[cfg(feature = "mpi")]
fn connect_mpi(launch: &Launch) -> Result<Box<dyn Collective>> {
    Ok(Box::new(crate::mpi::MpiCollective::init(launch)?))
}

#[cfg(not(feature = "mpi"))]
fn connect_mpi(launch: &Launch) -> Result<Box<dyn Collective>> {
    Err(mpi_not_built(launch.world_size))
}

/// The refusal of an MPI launch by a build without the `mpi` feature.
#[cfg_attr(feature = "mpi", allow(dead_code))]
fn mpi_not_built(world_size: usize) -> Error {
    Error::Distributed(format!(
        "started by mpirun as one of {world_size} processes, but this qattn was built without \
         MPI: rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev and \
         libclang-dev); running the processes as independent trainings would be wrong"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_launcher_variables_mean_one_process() {
        let l = Launch::detect(env(&[])).unwrap();
        assert_eq!(l, Launch::SINGLE);
        assert!(l.is_main());
        assert_eq!(l.threads(8), 8);
        assert_eq!(l.connect().unwrap().world_size(), 1);
    }

    #[test]
    fn open_mpi_variables_win_over_torchrun_ones() {
        let l = Launch::detect(env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
        ]))
        .unwrap();
        assert_eq!(
            l,
            Launch {
                launcher: Launcher::Mpi,
                rank: 1,
                world_size: 4,
                local_rank: 1,
                local_size: 2
            }
        );
        assert!(!l.is_main());
        assert_eq!(l.threads(16), 8);
        assert_eq!(l.threads(1), 1);
    }

    #[test]
    fn mpich_and_torchrun_variables_are_read() {
        let l = Launch::detect(env(&[("PMI_RANK", "2"), ("PMI_SIZE", "3")])).unwrap();
        assert_eq!((l.launcher, l.rank, l.world_size), (Launcher::Mpi, 2, 3));
        // No node-local variables: every process is assumed to share the node.
        assert_eq!((l.local_rank, l.local_size), (2, 3));
        let t = Launch::detect(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!(t.launcher, Launcher::Torchrun);
        let err = t.connect().err().expect("no NCCL backend").to_string();
        assert!(
            err.contains("NCCL") && err.contains("mpirun -np 2"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (pairs, needle) in [
            (
                vec![("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")],
                "OMPI_COMM_WORLD_RANK=\"x\"",
            ),
            (
                vec![("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "2")],
                "OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2",
            ),
            (vec![("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
            (
                vec![
                    ("PMI_RANK", "0"),
                    ("PMI_SIZE", "2"),
                    ("MPI_LOCALRANKID", "5"),
                    ("MPI_LOCALNRANKS", "2"),
                ],
                "MPI_LOCALRANKID=5",
            ),
        ] {
            let err = Launch::detect(env(&pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn an_mpi_launch_without_the_feature_is_refused() {
        let msg = mpi_not_built(3).to_string();
        assert!(
            msg.contains("3 processes") && msg.contains("--features mpi"),
            "{msg}"
        );
        #[cfg(not(feature = "mpi"))]
        {
            let l = Launch::detect(env(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")])).unwrap();
            let err = l.connect().err().expect("refused").to_string();
            assert_eq!(err, mpi_not_built(2).to_string());
        }
    }
}
