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

import os
import statistics
import time

# Never touch the network: the model comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

from benchutil import (  # noqa: E402
    baseline_parser,
    environment,
    finish,
    process_usage,
    run_fields,
    token_ids,
)


def main():
    parser = baseline_parser(__doc__, "iters", 10)
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
    ids = torch.tensor(token_ids(0, args.batch, args.seq), dtype=torch.long)
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
    peak_rss_mb, cpu_s = process_usage()
    result = {
        **run_fields(args, model, "estimator"),
        "iters": args.iters,
        "times_s": times,
        "median_s": median_s,
        "seqs_per_s": args.batch / median_s,
        "peak_rss_mb": peak_rss_mb,
        **environment(model),
        "load_s": load_s,
        "cpu_s": cpu_s,
        "output_abs_mean": output_abs_mean,
    }
    finish(
        args.json,
        result,
        f"torch {args.attn:>6}: median {median_s:.4f} s/batch, {result['seqs_per_s']:.1f} seq/s, "
        f"{result['threads']} threads",
    )


if __name__ == "__main__":
    main()
