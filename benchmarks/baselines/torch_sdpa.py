#!/usr/bin/env python3
"""PyTorch baseline for the qattn-kernels benchmarks.

Times torch.nn.functional.scaled_dot_product_attention on the CPU in f32 with the same
shapes as crates/qattn-kernels/benches/kernels.rs: B=2, H=8 (B*H=16), D=64, Lq=Lk.

  forward          under torch.no_grad()
  forward+backward q, k, v require grad; out.backward(grad_out)

Each size is warmed up, then timed with time.perf_counter() one call at a time until about
1 s (0.3 s with --quick) and at least 3 calls have run; the median is reported.

It also times one f32 matrix multiply, torch.mm of [M, K] x [K, N] with the shape of
crates/qattn-kernels/examples/gemm_peak.rs (4096 x 384 x 1536), for the GEMM row.

Usage: torch_sdpa.py --json PATH [--quick]
Writes {"torch_version", "threads", "b", "h", "d", "rows": [{"mode", "lk", "time_ms", ...}],
"gemm": {"m", "k", "n", "time_ms", "gflops"}}.
`cargo xtask bench kernels` runs this script with benchmarks/.venv/bin/python.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from benchutil import write_atomic

B, H, D = 2, 8, 64
SIZES = [128, 512, 2048, 8192]
QUICK_SIZES = [128, 512, 2048]
MIN_REPS = 3


def time_calls(fn, budget_s):
    """Warm up, then time single calls until `budget_s` has passed and MIN_REPS calls ran."""
    warm_start = time.perf_counter()
    fn()
    while time.perf_counter() - warm_start < 0.1 * budget_s:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < MIN_REPS or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench(lk, budget_s):
    g = torch.Generator().manual_seed(lk)
    shape = (B, H, lk, D)
    q, k, v, grad_out = (torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(4))

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def fwdbwd():
        for t in (qg, kg, vg):
            t.grad = None
        out = F.scaled_dot_product_attention(qg, kg, vg)
        out.backward(grad_out)

    rows = []
    for mode, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
        times = time_calls(fn, budget_s)
        row = {
            "mode": mode,
            "lk": lk,
            "time_ms": 1e3 * statistics.median(times),
            "min_ms": 1e3 * min(times),
            "reps": len(times),
        }
        print(
            f"torch sdpa {mode:6} Lk={lk:5}: median {row['time_ms']:9.3f} ms "
            f"(min {row['min_ms']:.3f} ms, {row['reps']} calls)",
            file=sys.stderr,
        )
        rows.append(row)
    return rows


GEMM_M, GEMM_K, GEMM_N = 4096, 384, 1536


def bench_gemm(budget_s):
    """Median time of torch.mm on the GEMM row's shape."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn((GEMM_M, GEMM_K), generator=g, dtype=torch.float32)
    b = torch.randn((GEMM_K, GEMM_N), generator=g, dtype=torch.float32)

    def mm():
        with torch.no_grad():
            torch.mm(a, b)

    t = statistics.median(time_calls(mm, budget_s))
    gflops = 2.0 * GEMM_M * GEMM_K * GEMM_N / t / 1e9
    print(f"torch mm {GEMM_M}x{GEMM_K}x{GEMM_N}: median {1e3 * t:.3f} ms, {gflops:.0f} GFLOP/s")
    return {"m": GEMM_M, "k": GEMM_K, "n": GEMM_N, "time_ms": 1e3 * t, "gflops": gflops}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", required=True, help="where to write results")
    parser.add_argument("--quick", action="store_true", help="Lk in {128,512,2048}, ~0.3 s per size")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes = QUICK_SIZES if args.quick else SIZES
    budget_s = 0.3 if args.quick else 1.0

    rows = []
    for lk in sizes:
        rows.extend(bench(lk, budget_s))

    cpu_capability = None
    if hasattr(torch.backends, "cpu") and hasattr(torch.backends.cpu, "get_cpu_capability"):
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    result = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability,
        "python": platform.python_version(),
        "b": B,
        "h": H,
        "d": D,
        "dtype": "float32",
        "quick": args.quick,
        "statistic": "median of single-call wall times (time.perf_counter)",
        "rows": rows,
        "gemm": bench_gemm(budget_s),
    }
    write_atomic(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
