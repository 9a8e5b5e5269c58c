//! Keeping freed buffers in the process, for training and for batch inference.
//!
//! A training step allocates and frees the same activation and gradient buffers every step,
//! many of them larger than glibc's mmap threshold (the word-embedding gradient alone is
//! 30522 × 384 f32 = 47 MB for MiniLM). glibc serves those with `mmap` and returns them with
//! `munmap` on free, and shrinks the heap top past its trim threshold, so the next step
//! faults every page in again and the kernel zeroes it. [`retain_freed_memory`] turns both off
//! (`M_MMAP_MAX` = 0, `M_TRIM_THRESHOLD` = the largest value), so freed blocks stay in the
//! heap for the next step. Measured with `perf stat -e page-faults` on one `bench_train` run
//! (MiniLM, batch 32 × 128, one thread, four steps, load and checkpoint included): 2.17 M
//! page faults and 6.6 s of system time before, 0.58 M (about the peak RSS of 1.9 GB in 4 KiB
//! pages, i.e. the first step's) and 2.7 s after, at the same peak RSS; benchmarks/README.md
//! has the step times. A batch forward pass does the same on a smaller scale (each layer's
//! activations, 6–25 MB each at batch 32 × 128): on a `bench_forward` run (six passes) page
//! faults went from 100 k to 60 k and system time from 0.46 to 0.22 s.
//!
//! The process's peak RSS is unchanged; what changes is that memory freed after the peak is
//! kept for reuse instead of being returned to the system, which suits a training or serving
//! process and is why the library never does this on its own: the `qattn` commands that train,
//! serve or encode, the benchmark examples and the kernel benchmarks call it at start-up.
//!
//! glibc falls back to `mmap` by itself when the heap cannot grow, so this cannot make an
//! allocation fail that would have succeeded. Other C libraries have no such settings and the
//! call does nothing there.

/// The environment variable that turns [`retain_freed_memory`] off (`0`, `false`, `no`,
/// `off`).
pub const ENV: &str = "QATTN_RETAIN_FREED_MEMORY";

/// Tells the C allocator to keep freed memory in the process (see the module docs). Returns
/// whether the settings were applied: `false` where the C library is not glibc, or when
/// [`ENV`] turns it off.
pub fn retain_freed_memory() -> bool {
    if !enabled(std::env::var(ENV).ok().as_deref()) {
        return false;
    }
    apply()
}

/// Whether the value of [`ENV`] leaves the setting on (unset: on).
fn enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "false" | "no" | "off")
    )
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time, from
    // any thread, and reports failure through its return value (1 = success).
    let mmap = unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) };
    // SAFETY: as above.
    let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
    mmap == 1 && trim == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_turns_it_off_and_anything_else_leaves_it_on() {
        for off in ["0", "false", "NO", " off "] {
            assert!(!enabled(Some(off)), "{off:?}");
        }
        for on in [None, Some("1"), Some("true"), Some("")] {
            assert!(enabled(on), "{on:?}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn on_glibc_the_settings_apply_and_allocation_still_works() {
        assert!(apply());
        // A block far above the default mmap threshold, now from the heap: written, read back
        // and freed, then allocated again.
        for _ in 0..2 {
            let mut v = vec![0u8; 64 << 20];
            v[(64 << 20) - 1] = 7;
            assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 7);
        }
    }
}
