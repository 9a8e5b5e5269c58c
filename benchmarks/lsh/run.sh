#!/usr/bin/env bash
# The `lsh` estimator against our exact kernel as the sequence grows (issue: sub-quadratic
# attention). Forward passes, B·H = 8, D = 64, clustered and diffuse inputs (see
# crates/qattn-kernels/examples/lsh_scaling.rs), all cores of this machine.
#
#   benchmarks/lsh/run.sh [SPEC] [LENGTHS] [REPEATS]
#   (defaults: lsh:8:256:256, 4096,8192,16384,32768,65536, 3)
#
# Writes benchmarks/results/lsh.{json,md}: per (L, inputs) the median seconds of both kernels
# and of PyTorch SDPA at the same shape (benchmarks/lsh/sdpa.py), the speed-ups, the relative
# error, each kernel's peak memory, and the fitted time exponent of each kernel (least squares
# of ln t on ln L over the lengths, with a 95 % t-interval). The SDPA column needs a Python with
# torch: $PYTHON, else benchmarks/.venv (which `cargo xtask bench kernels` creates); without one
# the column says so. Refuses a dirty tree unless ALLOW_DIRTY=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
spec="${1:-lsh:8:256:256}"
lengths="${2:-4096,8192,16384,32768,65536}"
repeats="${3:-3}"
if [ -n "$(git status --porcelain)" ] && [ "${ALLOW_DIRTY:-0}" != 1 ]; then
    echo "the tree is dirty: commit first (or ALLOW_DIRTY=1 for a page marked dirty)" >&2
    exit 2
fi
cargo build --release -p qattn-kernels --example lsh_scaling
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
"$root/target/release/examples/lsh_scaling" "$spec" "$lengths" "$repeats" | tee "$out"
sdpa_out="$(mktemp)"
trap 'rm -f "$out" "$sdpa_out"' EXIT
py="${PYTHON:-$root/benchmarks/.venv/bin/python}"
if [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null; then
    "$py" "$root/benchmarks/lsh/sdpa.py" "$lengths" "$repeats" | tee "$sdpa_out"
else
    echo "no Python with torch at $py: the SDPA column stays empty (run cargo xtask bench kernels once, or set PYTHON)" >&2
fi
python3 - "$out" "$root/benchmarks/results" "$spec $lengths $repeats" "$sdpa_out" <<'PY'
import json, math, os, subprocess, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
outdir, args = sys.argv[2], sys.argv[3]
sdpa = {r["length"]: r for r in (json.loads(l) for l in open(sys.argv[4]) if l.strip())}
for r in rows:
    s = sdpa.get(r["length"], {})
    r["sdpa_seconds"] = s.get("sdpa_seconds")
    r["sdpa_peak_mib"] = s.get("sdpa_peak_mib")
    r["speedup_vs_sdpa"] = r["sdpa_seconds"] / r["lsh_seconds"] if r["sdpa_seconds"] else None
torch_version = next((s.get("torch") for s in sdpa.values()), None)
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
def fit(points):
    pts = [(math.log(l), math.log(t)) for l, t in points if t]
    n = len(pts)
    if n < 3:
        return None
    mx = sum(x for x, _ in pts) / n; my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    s2 = sum((y - a - b * x) ** 2 for x, y in pts) / (n - 2)
    half = T975.get(n - 2, 2.0) * math.sqrt(s2 / sxx)
    return {"exponent": b, "ci95": [b - half, b + half], "points": n}
fits = {}
for kind in ("clustered", "diffuse"):
    sel = [r for r in rows if r["inputs"] == kind]
    fits[kind] = {"lsh": fit([(r["length"], r["lsh_seconds"]) for r in sel]),
                  "exact": fit([(r["length"], r["exact_seconds"]) for r in sel]),
                  "pytorch-sdpa": fit([(r["length"], r["sdpa_seconds"]) for r in sel])}
doc = {"benchmark": "lsh", "command": f"benchmarks/lsh/run.sh {args}",
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": commit, "tree": "dirty" if dirty else "clean", "machine": f"{cpu}, {os.cpu_count()} cores",
       "sdpa": {"torch": torch_version, "measured": bool(sdpa)},
       "rows": rows, "time_exponents": fits}
os.makedirs(outdir, exist_ok=True)
tmp = os.path.join(outdir, "lsh.json.tmp")
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2); f.write("\n")
os.replace(tmp, os.path.join(outdir, "lsh.json"))
f3 = lambda v, p=3: "—" if v is None else f"{v:.{p}f}"
md = ["# LSH attention against exact attention", "",
      f"Produced by `{doc['command']}` on {doc['date']} at commit {commit[:12]} ({doc['tree']} tree).", "",
      f"- Machine: {doc['machine']}; forward passes of `qattn_kernels::attention`, f32, B·H = 8, D = 64, median of the repeats (exact at L ≥ 32768: one run)",
      "- clustered: L/256 random directions of norm 8, each query and key one of them plus N(0, 0.02²) noise per coordinate, 256 keys per cluster (in-cluster logits ≈ 8, others ≈ 0 ± 1: each query's mass on its cluster's keys); diffuse: i.i.d. N(0, 1.5²) entries (logits ≈ N(0, 2.25²): peaked attention without angular structure). Generator: crates/qattn-kernels/examples/lsh_scaling.rs",
      "- targets (issue): ≥ 4× our exact forward at L = 16384 and ≥ 10× at 65536 with relative error ≤ 0.1 on clustered inputs; time exponent ≤ 1.2",
      "- relative error: ‖o_lsh − o_exact‖_F / ‖o_exact‖_F over the whole output; × exact: exact seconds / lsh seconds; × SDPA: PyTorch SDPA seconds / lsh seconds",
      ("- PyTorch SDPA: `scaled_dot_product_attention` " + (f"(torch {torch_version})" if torch_version else "") + ", f32, same shape and thread count, one input per length (its time does not depend on the values; benchmarks/lsh/sdpa.py)") if sdpa else "- PyTorch SDPA: not measured in this run (no Python with torch)",
      "- peak MiB: how far the process's resident set rose above its level at the start of the kernel's first call (VmHWM after a reset through /proc/self/clear_refs), output included", "",
      f"| L | inputs | exact s | {rows[0]['spec'] if rows else 'lsh'} s | SDPA s | × exact | × SDPA | relative error | peak MiB: exact / lsh / SDPA |", "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
f0 = lambda v: "—" if v is None else f"{v:.0f}"
for r in rows:
    mem = f"{f0(r.get('exact_peak_mib'))} / {f0(r.get('lsh_peak_mib'))} / {f0(r.get('sdpa_peak_mib'))}"
    md.append(f"| {r['length']} | {r['inputs']} | {f3(r['exact_seconds'])} | {f3(r['lsh_seconds'])} | {f3(r['sdpa_seconds'])} | {f3(r['speedup'],2)} | {f3(r['speedup_vs_sdpa'],2)} | {f3(r['relative_error'],4)} | {mem} |")
md += ["", "Fitted time exponents (ln t = a + b·ln L, 95 % t-interval):", "", "| inputs | kernel | b | 95 % CI |", "|---|---|---:|---|"]
for kind, kf in fits.items():
    for kern, fr in kf.items():
        if fr:
            md.append(f"| {kind} | {kern} | {fr['exponent']:.3f} | [{fr['ci95'][0]:.3f}, {fr['ci95'][1]:.3f}] |")
tmp = os.path.join(outdir, "lsh.md.tmp")
with open(tmp, "w") as f:
    f.write("\n".join(md) + "\n")
os.replace(tmp, os.path.join(outdir, "lsh.md"))
print("\n".join(md))
PY
