"""PyTorch SDPA at the shapes of the lsh benchmark, for the SDPA column of benchmarks/results/lsh.md.

    python benchmarks/lsh/sdpa.py L1,L2,... [REPEATS]

For every L: q, k, v of shape [1, 8, L, 64] (B·H = 8, D = 64), f32 on the CPU, with as many
torch threads as the machine has cores (what run.sh gives our kernels). Prints one JSON object
per L: the median seconds of `torch.nn.functional.scaled_dot_product_attention` over REPEATS
calls (one call at L >= 32768, as for our exact kernel), after one untimed call below that, and
the peak memory of the first timed call: how far the resident set rose above its level at the
start (VmHWM after resetting it through /proc/self/clear_refs, Linux only; null elsewhere), in
MiB, the measure the Rust side (crates/qattn-kernels/examples/lsh_scaling.rs) takes. SDPA's
time does not depend on the values, so one input per length serves both input kinds.
"""

import json
import os
import statistics
import sys
import time

import torch


def status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line[len(field):].split()[0])
    except OSError:
        return None
    return None


def peak_rise(fn):
    """Runs fn once; returns (its result, the rise of the resident set in MiB or None)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = status_kib("VmRSS:")
    out = fn()
    peak = status_kib("VmHWM:")
    if not reset or before is None or peak is None:
        return out, None
    return out, max(peak - before, 0) / 1024.0


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: sdpa.py L1,L2,... [REPEATS]")
    lengths = [int(x) for x in sys.argv[1].split(",") if x.strip()]
    repeats = max(int(sys.argv[2]) if len(sys.argv) > 2 else 3, 1)
    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    for length in lengths:
        q, k, v = (torch.randn(1, 8, length, 64, generator=gen) for _ in range(3))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        reps = 1 if length >= 32768 else repeats
        with torch.inference_mode():
            if length < 32768:
                sdpa(q, k, v)
            times, mem = [], None
            for r in range(reps):
                t0 = time.perf_counter()
                if r == 0:
                    out, mem = peak_rise(lambda: sdpa(q, k, v))
                else:
                    out = sdpa(q, k, v)
                times.append(time.perf_counter() - t0)
                del out
        print(json.dumps({
            "length": length, "batch_heads": 8, "head_dim": 64,
            "sdpa_seconds": statistics.median(times), "sdpa_peak_mib": mem,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
