#!/usr/bin/env python3
"""PyTorch baseline for `cargo xtask bench train`: HF transformers BERT fine-tuning on the CPU.

Loads BertForSequenceClassification (num_labels=2, a new classifier) from a local snapshot
folder with the attention implementation asked for ("eager" or "sdpa"), in float32, train mode
(dropout of the config), and trains it on (warmup + steps) * batch examples of exactly `seq`
tokens (no padding, attention mask all ones) with the token ids of
crates/qattn-train/examples/bench_train.rs: example b is row b of

  id[b][j] = 101 if j == 0, 102 if j == L-1, else 1000 + ((b*7919 + j*104729) % 28000)

with label b % 2; batch i holds examples i*batch .. (i+1)*batch. The hyper-parameters are
qattn-train's defaults, which follow HF's Trainer: AdamW (torch.optim.AdamW, fused when torch
supports it, as the Trainer's default `adamw_torch_fused`) with lr 2e-5, betas (0.9, 0.999),
eps 1e-8, weight decay 0.01 except on biases and LayerNorm weights (the Trainer's two
parameter groups), get_linear_schedule_with_warmup with 0 warm-up steps over warmup + steps,
and clip_grad_norm_(1.0).

One step is forward (with labels: cross-entropy), backward, clipping, optimizer step,
scheduler step and zero_grad; each is timed with time.perf_counter(). The first --warmup steps
are untimed; the median of the other --steps is reported.

Usage: hf_train.py --model-dir SNAPSHOT_DIR --attn eager|sdpa [--batch 32] [--seq 128]
                   [--warmup 2] [--steps 8] [--threads N] [--seed 42] --json PATH
Writes {"attention", "attn_implementation", "batch", "seq", "warmup", "steps",
"step_times_s", "median_s", "samples_per_s", "losses", "mean_loss", "peak_rss_mb", "threads",
"torch_version", "transformers_version", "optimizer", "hyperparameters", "load_s", "train_s",
"cpu_s"};
peak_rss_mb is ru_maxrss / 1024 and cpu_s the process's CPU time (user + system, all threads).
`cargo xtask bench train` runs this script with benchmarks/.venv/bin/python.
"""

import os
import statistics
import time

# Never touch the network: the model comes from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup  # noqa: E402

from benchutil import (  # noqa: E402
    baseline_parser,
    environment,
    finish,
    process_usage,
    run_fields,
    token_ids,
)

LR = 2e-5
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8
MAX_GRAD_NORM = 1.0


def param_groups(model):
    """The Trainer's two groups: weight decay except on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("bias") or "LayerNorm" in name or "layernorm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(groups):
    """torch.optim.AdamW, fused where this torch supports it (HF's default optimizer)."""
    try:
        return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS), "for-loop"


def main():
    parser = baseline_parser(__doc__, "steps", 8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.batch < 1 or args.seq < 3 or args.steps < 1 or args.warmup < 0:
        parser.error("need --batch >= 1, --seq >= 3, --steps >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = BertForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=2, attn_implementation=args.attn, local_files_only=True
    )
    model = model.float().train()
    load_s = time.perf_counter() - started

    total = args.warmup + args.steps
    optimizer, kind = adamw(param_groups(model))
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total)
    batches = []
    for i in range(total):
        first = i * args.batch
        ids = torch.tensor(token_ids(first, args.batch, args.seq), dtype=torch.long)
        labels = torch.tensor([b % 2 for b in range(first, first + args.batch)])
        batches.append((ids, torch.ones_like(ids), labels))

    times, losses = [], []
    started = time.perf_counter()
    for i, (ids, mask, labels) in enumerate(batches):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(elapsed)
    train_s = time.perf_counter() - started

    median_s = statistics.median(times)
    peak_rss_mb, cpu_s = process_usage()
    result = {
        **run_fields(args, model, "attention"),
        "steps": args.steps,
        "step_times_s": times,
        "median_s": median_s,
        "samples_per_s": args.batch / median_s,
        "losses": losses,
        "mean_loss": statistics.fmean(losses[args.warmup :]),
        "peak_rss_mb": peak_rss_mb,
        **environment(model),
        "optimizer": f"torch.optim.AdamW ({kind})",
        "hyperparameters": {
            "optimizer": "AdamW",
            "learning_rate": LR,
            "weight_decay": WEIGHT_DECAY,
            "no_weight_decay": "biases, LayerNorm weights",
            "adam_betas": list(BETAS),
            "adam_epsilon": EPS,
            "lr_schedule": "linear",
            "warmup_steps": 0,
            "scheduled_steps": total,
            "max_grad_norm": MAX_GRAD_NORM,
            "clipping": "global norm (clip_grad_norm_)",
            "dropout": "model config, train mode",
        },
        "load_s": load_s,
        "train_s": train_s,
        "cpu_s": cpu_s,
    }
    finish(
        args.json,
        result,
        f"torch {args.attn:>6}: median {median_s:.3f} s/step, "
        f"{result['samples_per_s']:.2f} samples/s, {result['threads']} threads",
    )


if __name__ == "__main__":
    main()
