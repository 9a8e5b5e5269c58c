#!/usr/bin/env bash
# Data-parallel fine-tuning on one machine: 1 process with every core against 2 MPI processes
# with half the cores each, for each gradient reduction (f32, bf16, top-k 1 %, hierarchical).
#
#   cargo build --release --features qattn-cli/mpi
#   benchmarks/distributed/run.sh [STEPS]
#
# Workload: sentence-transformers/all-MiniLM-L6-v2 fine-tuned on the first 2048 MRPC training
# pairs (the shared data: QATTN_DATA_DIR, QATTN_HF_CACHE), global batch 32 (1 × 32 or 2 × 16),
# max length 128, lr 2e-5, STEPS optimiser steps (default 12) logged one by one. Per
# configuration: median samples/s over the steps after the first two (warm-up), and for the
# 2-process runs the median seconds per step spent in gradient reduction (comm_seconds, waiting
# for the other rank included), its share of the step (comm_share) and the payload bytes per
# step (comm_bytes). Writes benchmarks/results/distributed.{json,md}; refuses a dirty tree
# unless ALLOW_DIRTY=1 (the pages say which).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
steps="${1:-12}"
qattn="${QATTN:-$root/target/release/qattn}"
data="${QATTN_DATA_DIR:-$root/../shared/data}"
hf="${QATTN_HF_CACHE:-$data/hf}"
[ -x "$qattn" ] || { echo "no $qattn: cargo build --release --features qattn-cli/mpi" >&2; exit 2; }
command -v mpirun > /dev/null || { echo "mpirun not found (Debian: openmpi-bin)" >&2; exit 2; }
[ -f "$data/glue/MRPC/train.tsv" ] || { echo "no $data/glue/MRPC/train.tsv: set QATTN_DATA_DIR" >&2; exit 2; }
version="$("$qattn" --version)"
if [ -n "$(git status --porcelain)" ] && [ "${ALLOW_DIRTY:-0}" != 1 ]; then
    echo "the tree is dirty: commit first (or ALLOW_DIRTY=1 for a page marked dirty)" >&2
    exit 2
fi
case "$version" in
    *dirty*) [ "${ALLOW_DIRTY:-0}" = 1 ] || { echo "$qattn is a dirty build ($version): rebuild at a clean commit" >&2; exit 2; } ;;
esac
cores="$(nproc)"
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$data/glue/MRPC/train.tsv" "$work/train.jsonl" <<'PY'
import csv, json, sys
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8-sig"), delimiter="\t", quoting=csv.QUOTE_NONE))
with open(sys.argv[2], "w") as out:
    for r in rows[1:2049]:
        out.write(json.dumps({"text": r[3], "text_pair": r[4], "label": int(r[0])}) + "\n")
PY
export HF_HUB_CACHE="$hf" HF_HUB_OFFLINE=1
common=(train --model sentence-transformers/all-MiniLM-L6-v2 --train "$work/train.jsonl"
        --lr 2e-5 --seed 1 --max-steps "$steps" --logging-steps 1 --save-steps 1000000 --plain
        --set max_length=128)
run() {  # name ranks threads batch extra-set [env...]
    local name="$1" ranks="$2" threads="$3" batch="$4" set="$5"; shift 5
    local out="$work/$name"
    echo "== $name" >&2
    if [ "$ranks" = 1 ]; then
        env RAYON_NUM_THREADS="$threads" "$@" "$qattn" "${common[@]}" --output-dir "$out" \
            --batch-size "$batch" --set "$set" > /dev/null
    else
        local xs=()
        for kv in "$@"; do xs+=(-x "$kv"); done
        mpirun --allow-run-as-root --oversubscribe -np "$ranks" -x RAYON_NUM_THREADS="$threads" \
            -x HF_HUB_CACHE -x HF_HUB_OFFLINE "${xs[@]}" "$qattn" "${common[@]}" \
            --output-dir "$out" --batch-size "$batch" --set "$set" > /dev/null
    fi
    echo "$name $ranks $threads $batch $set $out" >> "$work/runs.txt"
}
run "1x${cores}-f32" 1 "$cores" 32 gradient_reduction=f32
run "2x${half}-f32" 2 "$half" 16 gradient_reduction=f32
run "2x${half}-bf16" 2 "$half" 16 gradient_reduction=bf16
run "2x${half}-topk0.01" 2 "$half" 16 gradient_reduction=topk:0.01
run "2x${half}-hierarchical" 2 "$half" 16 hierarchical_allreduce=true QATTN_RANKS_PER_NODE=1
python3 - "$work/runs.txt" "$root/benchmarks/results" "$version" "$steps" "$cores" <<'PY'
import json, os, statistics, subprocess, sys, datetime, platform
runs_file, outdir, version, steps, cores = sys.argv[1:6]
def cpu():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return platform.processor()
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
rows = []
for line in open(runs_file):
    name, ranks, threads, batch, setting, out = line.split()
    m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    m = [x for x in m if "loss" in x][2:]
    med = lambda k: statistics.median(x[k] for x in m) if m and k in m[0] else None
    rows.append({"configuration": name, "processes": int(ranks), "threads_per_process": int(threads),
                 "batch_per_process": int(batch), "setting": setting,
                 "samples_per_second": med("samples_per_second"), "comm_seconds": med("comm_seconds"),
                 "comm_share": med("comm_share"), "comm_bytes": med("comm_bytes"),
                 "steps_measured": len(m), "last_loss": m[-1]["loss"] if m else None})
base = rows[0]["samples_per_second"]
for r in rows:
    r["x_one_process"] = r["samples_per_second"] / base if base else None
doc = {"benchmark": "distributed", "command": f"benchmarks/distributed/run.sh {steps}",
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": commit, "tree": "dirty" if dirty else "clean", "binary": version,
       "machine": f"{cpu()}, {cores} cores", "workload": "all-MiniLM-L6-v2 fine-tuning, MRPC pairs, global batch 32, max length 128, f32",
       "rows": rows}
os.makedirs(outdir, exist_ok=True)
with open(os.path.join(outdir, "distributed.json.tmp"), "w") as f:
    json.dump(doc, f, indent=2); f.write("\n")
os.replace(os.path.join(outdir, "distributed.json.tmp"), os.path.join(outdir, "distributed.json"))
fmt = lambda v, p: "—" if v is None else f"{v:.{p}f}"
md = [f"# Data-parallel fine-tuning on one machine", "",
      f"Produced by `{doc['command']}` on {doc['date']} at commit {commit[:12]} ({doc['tree']} tree); binary: `{version}`.", "",
      f"- Machine: {doc['machine']}",
      f"- Workload: {doc['workload']}; {steps} optimiser steps per configuration, the first two not counted",
      "- samples/s: median over the measured steps (global batch / step wall time); × 1 process: against the first row of this run",
      "- comm s/step: median seconds per step inside the gradient reduction (waiting for the other rank included); comm share: that over the step's wall time; payload: bytes per step this rank contributed (f32 4 per value, bf16 2, top-k 8 per sent entry)",
      "- hierarchical: QATTN_RANKS_PER_NODE=1, so each rank is its own node and the two-level path (reduce in node, all-reduce across nodes, broadcast) runs in full", "",
      "| configuration | processes × threads | samples/s | × 1 process | comm s/step | comm share | payload MB/step | last loss |",
      "|---|---|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    md.append(f"| {r['configuration']} | {r['processes']} × {r['threads_per_process']} | {fmt(r['samples_per_second'],1)} | {fmt(r['x_one_process'],2)} | {fmt(r['comm_seconds'],3)} | {fmt(r['comm_share'],3)} | {fmt(None if r['comm_bytes'] is None else r['comm_bytes']/1e6,1)} | {fmt(r['last_loss'],4)} |")
with open(os.path.join(outdir, "distributed.md.tmp"), "w") as f:
    f.write("\n".join(md) + "\n")
os.replace(os.path.join(outdir, "distributed.md.tmp"), os.path.join(outdir, "distributed.md"))
print("\n".join(md))
PY
