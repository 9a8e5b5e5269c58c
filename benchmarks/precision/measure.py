#!/usr/bin/env python3
"""Accuracy of reduced-precision weights (f16, int8) against f32 on GLUE dev sets.

For each (task, fine-tuned checkpoint) it runs `qattn glue predict --split dev --precision P`
for P in f32, f16, int8 (each in its own process, so the peak RSS is that run's), scores the
per-example outputs, computes the agreement of predictions with f32, and runs
`qattn verify compare` (paired bootstrap, 10 000 resamples) of each reduced precision against
f32. Writes benchmarks/results/precision.json and precision.md.

Usage (from the repository root):
  python3 benchmarks/precision/measure.py --qattn target/release/qattn \
      --task sst2=runs/precision/sst2-model --task mrpc=runs/precision/mrpc-model \
      --work runs/precision --repeats 2
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

PRECISIONS = ["f32", "f16", "int8"]
METRIC = {"sst2": "accuracy", "mrpc": "f1", "cola": "mcc", "rte": "accuracy", "wnli": "accuracy"}
DEV = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "rte": "RTE", "wnli": "WNLI"}


def run(cmd):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p, wall


def read_jsonl(path):
    with open(path) as f:
        return {str(o["id"]): o for o in map(json.loads, filter(str.strip, f))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qattn", required=True)
    ap.add_argument("--task", action="append", required=True, help="TASK=MODEL_DIR")
    ap.add_argument("--work", required=True, help="git-ignored folder for predictions")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per precision")
    ap.add_argument("--out", default="benchmarks/results/precision")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    results = {"commands": [], "tasks": []}
    for spec in a.task:
        task, model = spec.split("=", 1)
        metric = METRIC[task]
        entry = {"task": task, "model": model, "metric": metric, "runs": {}, "compare": {}}
        outputs = {}
        for rep in range(a.repeats):
            for prec in PRECISIONS:
                jsonl = os.path.join(a.work, f"{task}-{prec}.jsonl")
                tsv = os.path.join(a.work, f"{task}-{prec}.tsv")
                cmd = [a.qattn, "glue", "predict", "--task", task, "--model", model,
                       "--split", "dev", "--max-len", str(a.max_len),
                       "--batch-size", str(a.batch_size), "--precision", prec,
                       "--offline", "--output", tsv, "--outputs-jsonl", jsonl]
                if rep == 0:
                    results["commands"].append(" ".join(cmd))
                p, wall = run(cmd)
                m = re.search(r"inference ([0-9.]+) s, peak RSS ([0-9]+) MiB", p.stderr)
                dm = re.search(r"dev metrics (\{.*\})", p.stderr)
                r = entry["runs"].setdefault(prec, {"inference_s": [], "process_wall_s": [],
                                                    "peak_rss_mib": []})
                r["inference_s"].append(float(m.group(1)))
                r["peak_rss_mib"].append(int(m.group(2)))
                r["process_wall_s"].append(round(wall, 2))
                r["dev_metrics"] = json.loads(dm.group(1))
                outputs[prec] = read_jsonl(jsonl)
                print(f"{task} {prec} rep {rep}: {r['dev_metrics']} inference "
                      f"{m.group(1)} s, RSS {m.group(2)} MiB", file=sys.stderr)
        ref = outputs["f32"]
        entry["examples"] = len(ref)
        for prec in PRECISIONS[1:]:
            got = outputs[prec]
            agree = sum(1 for k, o in ref.items() if got[k]["pred"] == o["pred"])
            cmd = [a.qattn, "verify", "compare",
                   "--a", os.path.join(a.work, f"{task}-f32.jsonl"),
                   "--b", os.path.join(a.work, f"{task}-{prec}.jsonl"),
                   "--metric", metric, "--test", "bootstrap", "--resamples", "10000",
                   "--seed", "0"]
            results["commands"].append(" ".join(cmd))
            p, _ = run(cmd)
            entry["compare"][prec] = {
                "agreement": agree / len(ref),
                "disagreements": len(ref) - agree,
                "verify_compare": json.loads(p.stdout),
            }
        results["tasks"].append(entry)
    results["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(),
                          "loadavg_at_end": os.getloadavg()}
    results["qattn_binary"] = a.qattn
    results["unix_time"] = int(time.time())
    with open(a.out + ".json.tmp", "w") as f:
        json.dump(results, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(a.out + ".json.tmp", a.out + ".json")
    print(a.out + ".json")


if __name__ == "__main__":
    main()
