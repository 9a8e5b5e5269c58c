#!/usr/bin/env python3
"""Model-level GPU check of qattn (the GPU issue's device check), run by a GPU bundle's run.sh.

Uses the bundle's CUDA builds of the qattn-model example `bench_forward` (--forward PATH) and
the qattn-train example `bench_train` (--train PATH), and PyTorch + transformers from this Python:

1. Parity, GPU against CPU, on the same weights and token ids: the f32 last hidden state of
   `bench_forward` (batch 4 x 128, estimators `exact` and `stratified:32`; max |diff|, target
   1e-4), and the per-step training losses of `bench_train` (batch 8 x 64, 5 steps, exact
   attention, dropout on; max |diff|, stated tolerance 1e-3).
2. Throughput on the GPU, qattn (f32: qattn has no bf16 autocast yet) and PyTorch transformers
   side by side on the same model, batch and length: inference sequences/s at batch 1 x 16 and
   32 x 128, fine-tuning samples/s at 32 x 128 (AdamW, lr 2e-5); PyTorch in f32 and with bf16
   autocast (sdpa attention), its peak GPU memory from torch.cuda.max_memory_allocated.
   qattn's peak GPU memory is not measured by this version (null).

The model: --model-dir, else all-MiniLM-L6-v2 from the local Hugging Face cache, else a
randomly initialised BERT with all-MiniLM-L6-v2's configuration and tokenizer (the bundle
carries config.json and the tokenizer files: --model-config PATH, the others beside it; random weights measure speed and device parity
as well as trained ones). Which one was used is written as "weights".

Writes OUT/gpu-model.json and OUT/gpu-model.md; exits 1 when a parity check fails or a step
errors, 0 otherwise. `--device cpu` runs the same flow with the CPU as "the device" (to test the
script without a GPU).

usage: model_check.py --forward BIN --train BIN --model-config config.json --out DIR
                      [--model-dir DIR] [--device cuda]
                      [--quick]   (tiny sizes and repeats: tests the flow, measures nothing)
"""
import argparse
import datetime
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

# The large throughput workload (batch, seq) and the timed repeats; --quick shrinks them.
BIG = (32, 128)
REPS = 20
HIDDEN_TOL = 1e-4
LOSS_TOL = 1e-3
SOURCE_CLAIMS = {
    "training samples/s on one GPU": "2,100",
    "single-sequence latency": "12 ms",
    "memory of a 24-layer model (training / inference)": "18 GB / 8 GB",
}


def run_json(cmd, timeout):
    """Runs a bench binary with --json; returns its report (or raises with its stderr)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        p = subprocess.run(cmd + ["--json", path], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
        with open(path) as fh:
            return json.load(fh)
    finally:
        os.unlink(path)


def read_f32(path):
    with open(path, "rb") as fh:
        data = fh.read()
    return struct.unpack(f"<{len(data) // 4}f", data)


def resolve_model(args):
    if args.model_dir:
        return args.model_dir, "given"
    try:
        from huggingface_hub import snapshot_download

        d = snapshot_download("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True)
        if os.path.isfile(os.path.join(d, "model.safetensors")):
            return d, "pretrained all-MiniLM-L6-v2 (local cache)"
    except Exception:
        pass
    import torch
    from transformers import BertConfig, BertModel

    out = os.path.join(args.out, "random-minilm")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = BertConfig.from_json_file(args.model_config)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    files = os.path.dirname(os.path.abspath(args.model_config))
    for name in os.listdir(files):
        if name != "config.json":
            with open(os.path.join(files, name), "rb") as src:
                data = src.read()
            with open(os.path.join(out, name), "wb") as dst:
                dst.write(data)
    return out, "random initialisation (seed 0), all-MiniLM-L6-v2 configuration"


def torch_rows(model_dir, device):
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def ids(b, length):
        rows = []
        for i in range(b):
            row = [1000 + (i * 7919 + j * 104729) % 28000 for j in range(length)]
            row[0], row[-1] = 101, 102
            rows.append(row)
        return torch.tensor(rows, device=dev)

    rows = []
    for precision in ("f32", "bf16"):
        auto = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").to(dev).eval()
        for b, length in ((1, 16), BIG):
            x = ids(b, length)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad(), auto:
                for _ in range(3):
                    model(input_ids=x)
                sync()
                times = []
                for _ in range(REPS):
                    t0 = time.perf_counter()
                    model(input_ids=x)
                    sync()
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rows.append({"system": f"pytorch {precision} sdpa", "kind": "inference", "batch": b,
                         "seq": length, "median_s": med, "per_s": b / med,
                         "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                                         if dev.type == "cuda" else None)})
        del model
        clf = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, attn_implementation="sdpa").to(dev).train()
        opt = torch.optim.AdamW(clf.parameters(), lr=2e-5, weight_decay=0.01)
        x = ids(*BIG)
        y = torch.arange(BIG[0], device=dev) % 2
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(2 + max(REPS // 2, 1)):
            t0 = time.perf_counter()
            with auto:
                loss = clf(input_ids=x, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if step >= 2:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"system": f"pytorch {precision} sdpa", "kind": "fine-tuning", "batch": BIG[0],
                     "seq": BIG[1], "median_s": med, "per_s": BIG[0] / med,
                     "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                                     if dev.type == "cuda" else None)})
        del clf, opt
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--forward", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--model-config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    global BIG, REPS
    if args.quick:
        BIG, REPS = (2, 16), 2
    os.makedirs(args.out, exist_ok=True)
    fwd, train = args.forward, args.train
    report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": args.device, "parity": [], "throughput": [], "errors": [],
              "source_document": SOURCE_CLAIMS,
              "qattn_peak_gpu_mb": None}
    model_dir, weights = resolve_model(args)
    report["weights"] = weights
    common = ["--model", model_dir]
    failed = False

    for spec in ("exact", "stratified:32"):
        try:
            outs = {}
            for dev in ("cpu", args.device):
                path = os.path.join(args.out, f"hidden-{spec.replace(':', '-')}-{dev}.f32")
                run_json([fwd, *common, "--attention", spec, "--batch", "4", "--seq", "128",
                          "--warmup", "0", "--iters", "1", "--device", dev,
                          "--hidden-out", path], 600)
                outs[dev] = read_f32(path)
                os.unlink(path)
            diff = max(abs(a - b) for a, b in zip(outs["cpu"], outs[args.device]))
            ok = len(outs["cpu"]) == len(outs[args.device]) and diff <= HIDDEN_TOL
            failed |= not ok
            report["parity"].append({"check": f"last hidden state, {spec}, 4x128",
                                     "max_abs_diff": diff, "tolerance": HIDDEN_TOL, "pass": ok})
        except Exception as e:  # noqa: BLE001 - reported, the other checks still run
            failed = True
            report["errors"].append(f"hidden-state parity {spec}: {e}")
    try:
        losses = {}
        for dev in ("cpu", args.device):
            r = run_json([train, *common, "--batch", "8", "--seq", "64", "--warmup", "1",
                          "--steps", "4", "--device", dev], 900)
            losses[dev] = r["losses"]
        diff = max(abs(a - b) for a, b in zip(losses["cpu"], losses[args.device]))
        ok = diff <= LOSS_TOL
        failed |= not ok
        report["parity"].append({"check": "fine-tuning losses, 5 steps, 8x64, exact",
                                 "cpu": losses["cpu"], "device": losses[args.device],
                                 "max_abs_diff": diff, "tolerance": LOSS_TOL, "pass": ok})
    except Exception as e:  # noqa: BLE001
        failed = True
        report["errors"].append(f"loss parity: {e}")

    for b, length in ((1, 16), BIG):
        try:
            r = run_json([fwd, *common, "--batch", str(b), "--seq", str(length), "--warmup", "3",
                          "--iters", str(REPS), "--device", args.device], 600)
            report["throughput"].append({"system": "qattn f32", "kind": "inference", "batch": b,
                                         "seq": length, "median_s": r["median_s"],
                                         "per_s": r["seqs_per_s"], "peak_gpu_mb": None})
        except Exception as e:  # noqa: BLE001
            failed = True
            report["errors"].append(f"qattn inference {b}x{length}: {e}")
    try:
        r = run_json([train, *common, "--batch", str(BIG[0]), "--seq", str(BIG[1]), "--warmup",
                      "2", "--steps", str(max(REPS // 2, 1)), "--device", args.device], 900)
        report["throughput"].append({"system": "qattn f32", "kind": "fine-tuning",
                                     "batch": BIG[0], "seq": BIG[1], "median_s": r["median_s"],
                                     "per_s": r["samples_per_s"], "peak_gpu_mb": None})
    except Exception as e:  # noqa: BLE001
        failed = True
        report["errors"].append(f"qattn fine-tuning: {e}")
    try:
        report["throughput"].extend(torch_rows(model_dir, args.device))
    except Exception as e:  # noqa: BLE001
        failed = True
        report["errors"].append(f"pytorch: {e}")

    with open(os.path.join(args.out, "gpu-model.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    lines = ["# qattn models on the GPU", "",
             f"{report['date_utc']}, device `{args.device}`, weights: {weights}. "
             "Written by benchmarks/gpu/model_check.py (run by the GPU bundle's run.sh).", "",
             "## Parity, GPU against CPU", "", "| check | max abs diff | tolerance | pass |",
             "|---|---:|---:|---|"]
    for p in report["parity"]:
        lines.append(f"| {p['check']} | {p['max_abs_diff']:.2e} | {p['tolerance']:.0e} | "
                     f"{'yes' if p['pass'] else 'NO'} |")
    lines += ["", "## Throughput (same GPU, same model, batch and length)", "",
              "| system | workload | batch x seq | median s | per s | peak GPU MiB |",
              "|---|---|---|---:|---:|---:|"]
    for t in report["throughput"]:
        mem = "—" if t["peak_gpu_mb"] is None else f"{t['peak_gpu_mb']:.0f}"
        lines.append(f"| {t['system']} | {t['kind']} | {t['batch']}x{t['seq']} | "
                     f"{t['median_s']:.4f} | {t['per_s']:.1f} | {mem} |")
    lines += ["", "The source document's figures, for reference (not measured here): "
              + "; ".join(f"{k}: {v}" for k, v in SOURCE_CLAIMS.items()) + "."]
    if report["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["errors"]]
    with open(os.path.join(args.out, "gpu-model.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
