#!/usr/bin/env python3
"""PyTorch baseline for `cargo xtask bench model`: HF transformers BERT forward on the CPU.

Loads the model from a local snapshot folder with transformers' AutoModel and the attention
implementation asked for ("eager" or "sdpa"), in float32, eval mode, under
torch.inference_mode(), and times full forward passes on the same deterministic token ids as
crates/qattn-model/examples/bench_forward.rs:

  id[b][j] = 101 if j == 0, 102 if j == L-1, else 1000 + ((b*7919 + j*104729) % 28000)

with an attention mask of all ones (no padding). After --warmup untimed passes, --iters passes
are timed one by one with time.perf_counter(); the median is reported.

Usage: hf_bert.py --model-dir SNAPSHOT_DIR --attn eager|sdpa [--batch 32] [--seq 128]
                  [--warmup 2] [--iters 10] [--threads N] --json PATH
Writes {"estimator", "attn_implementation", "batch", "seq", "warmup", "iters", "times_s",
"median_s", "seqs_per_s", "peak_rss_mb", "threads", "torch_version", "transformers_version",
"load_s", "cpu_s", "output_abs_mean"}; peak_rss_mb is ru_maxrss (KiB on Linux) / 1024 and
cpu_s the process's CPU time (user + system, all threads).
`cargo xtask bench model` runs this script with benchmarks/.venv/bin/python.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

# Never touch the network: the model comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel  # noqa: E402

from benchutil import write_atomic  # noqa: E402


def token_ids(batch, seq):
    """The benchmark's token ids, the same formula as the Rust example."""
    rows = []
    for b in range(batch):
        row = []
        for j in range(seq):
            if j == 0:
                row.append(101)
            elif j == seq - 1:
                row.append(102)
            else:
                row.append(1000 + (b * 7919 + j * 104729) % 28000)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="snapshot folder with config.json")
    parser.add_argument("--attn", required=True, choices=["eager", "sdpa"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", metavar="PATH", required=True, help="where to write results")
    args = parser.parse_args()
    if args.batch < 1 or args.seq < 2 or args.iters < 1:
        parser.error("need --batch >= 1, --seq >= 2 and --iters >= 1")

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = AutoModel.from_pretrained(
        args.model_dir, attn_implementation=args.attn, local_files_only=True
    )
    model = model.float().eval()
    load_s = time.perf_counter() - started
    ids = token_ids(args.batch, args.seq)
    mask = torch.ones_like(ids)

    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(input_ids=ids, attention_mask=mask)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            out = model(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - t0)
        output_abs_mean = out.last_hidden_state.abs().mean().item()

    median_s = statistics.median(times)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "estimator": f"pytorch-{args.attn}",
        "attn_implementation": getattr(model.config, "_attn_implementation", args.attn),
        "model_dir": os.path.abspath(args.model_dir),
        "batch": args.batch,
        "seq": args.seq,
        "warmup": args.warmup,
        "iters": args.iters,
        "times_s": times,
        "median_s": median_s,
        "seqs_per_s": args.batch / median_s,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "dtype": str(next(model.parameters()).dtype),
        "load_s": load_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "output_abs_mean": output_abs_mean,
    }
    print(
        f"torch {args.attn:>6}: median {median_s:.4f} s/batch, {result['seqs_per_s']:.1f} seq/s, "
        f"{result['threads']} threads",
        file=sys.stderr,
    )
    write_atomic(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
