"""Helpers shared by the baseline scripts in this folder."""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile


def write_atomic(path, text):
    """Write `text` to `path` atomically: a temporary file in the same folder, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def token_ids(first, batch, seq):
    """The benchmarks' token ids as a list of `batch` rows, rows `first .. first + batch` of

    id[b][j] = 101 if j == 0, 102 if j == L-1, else 1000 + ((b*7919 + j*104729) % 28000)

    the same formula as crates/qattn-model/examples/bench_util/mod.rs.
    """
    rows = []
    for b in range(first, first + batch):
        row = []
        for j in range(seq):
            if j == 0:
                row.append(101)
            elif j == seq - 1:
                row.append(102)
            else:
                row.append(1000 + (b * 7919 + j * 104729) % 28000)
        rows.append(row)
    return rows


def process_usage():
    """This process's peak RSS in MiB (ru_maxrss, KiB on Linux) and CPU time in seconds
    (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def environment(model):
    """What ran the PyTorch side: torch's threads and version, transformers' version, Python,
    and the dtype of `model`'s parameters."""
    import torch
    import transformers

    return {
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "dtype": str(next(model.parameters()).dtype),
    }


def finish(path, result, line):
    """Print the summary `line` to stderr and write `result` as JSON to `path` atomically."""
    print(line, file=sys.stderr)
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def baseline_parser(doc, count, count_default):
    """The command line the HF baselines share: --model-dir, --attn, --batch, --seq, --warmup,
    --threads, --json, and `--{count}` timed units (default `count_default`)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="snapshot folder with config.json")
    p.add_argument("--attn", required=True, choices=["eager", "sdpa"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(f"--{count}", type=int, default=count_default)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", metavar="PATH", required=True, help="where to write results")
    return p


def run_fields(args, model, name_key):
    """The fields every HF baseline result starts with: the configuration's row label under
    `name_key`, the attention implementation, the snapshot folder and the shape."""
    return {
        name_key: f"pytorch-{args.attn}",
        "attn_implementation": getattr(model.config, "_attn_implementation", args.attn),
        "model_dir": os.path.abspath(args.model_dir),
        "batch": args.batch,
        "seq": args.seq,
        "warmup": args.warmup,
    }
