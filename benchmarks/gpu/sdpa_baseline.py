#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention baseline for the qattn CUDA kernels (issue 8).

Times SDPA forward and forward+backward for B*H = 16 (B=1, H=16), D = 64, Lq = Lk in
{512, 2048, 8192}: bf16 through the FLASH backend, f32 through the EFFICIENT backend (flash
has no f32 kernel). CUDA events, warm-ups, median of repeats. Then merges the Rust check's
JSON (qattn-gpu-check --out) into one file and prints a table with ratios.

usage: sdpa_baseline.py --rust gpu-rust.json --out gpu.json [--sizes 512,2048,8192]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys


def bench(fn, warmup, reps, torch):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times)


def sdpa_rows(sizes):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    dev = "cuda"
    for l in sizes:
        flops_fwd = 4.0 * 16 * l * l * 64
        reps = 10 if l >= 8192 else 20
        for dtype, backend, bname in [
            (torch.bfloat16, SDPBackend.FLASH_ATTENTION, "flash"),
            (torch.float32, SDPBackend.EFFICIENT_ATTENTION, "efficient"),
        ]:
            g = torch.Generator(device=dev).manual_seed(l)
            q, k, v = (torch.randn(1, 16, l, 64, device=dev, dtype=dtype, generator=g) for _ in range(3))
            dname = "bf16" if dtype == torch.bfloat16 else "f32"
            try:
                with sdpa_kernel([backend]):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v)
                    med, mn = bench(fwd, 3, reps, torch)
                    rows.append(dict(impl="torch_sdpa", backend=bname, op="exact", dtype=dname,
                                     **{"pass": "fwd"}, bh=16, d=64, l=l, median_ms=med, min_ms=mn,
                                     reps=reps, tflops=flops_fwd / (med * 1e-3) / 1e12))
                    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
                    do = torch.randn_like(q)

                    def fb():
                        o = F.scaled_dot_product_attention(qg, kg, vg)
                        o.backward(do)
                    med, mn = bench(fb, 3, reps, torch)
                    rows.append(dict(impl="torch_sdpa", backend=bname, op="exact", dtype=dname,
                                     **{"pass": "fwd+bwd"}, bh=16, d=64, l=l, median_ms=med,
                                     min_ms=mn, reps=reps))
            except Exception as e:  # report, do not hide
                rows.append(dict(impl="torch_sdpa", backend=bname, op="exact", dtype=dname, l=l,
                                 error=str(e)[:300]))
            done = [r for r in rows if r.get("l") == l and r.get("dtype") == dname and "median_ms" in r]
            print(f"sdpa {bname} {dname} L={l}: " + ", ".join(f"{r['pass']} {r['median_ms']:.3f} ms" for r in done), flush=True)
    return rows, torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", default="gpu-rust.json")
    ap.add_argument("--out", default="gpu.json")
    ap.add_argument("--sizes", default="512,2048,8192")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    rows, torch = sdpa_rows(sizes)
    rust = {}
    if os.path.exists(a.rust):
        with open(a.rust) as f:
            rust = json.load(f)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:
        smi = f"nvidia-smi failed: {e}"
    out = dict(
        date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        card=torch.cuda.get_device_name(0),
        nvidia_smi=smi,
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        python=sys.version.split()[0],
        shapes="B=1, H=16, D=64, Lq=Lk",
        qattn=rust,
        sdpa=rows,
    )
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, a.out)

    # Table.
    def find(impl, op, dtype, l, p="fwd"):
        src = rust.get("timings", []) if impl == "qattn" else rows
        for r in src:
            if r.get("op") == op and r.get("dtype") == dtype and r.get("l") == l and r.get("pass") == p and "median_ms" in r:
                return r["median_ms"]
        return None

    print(f"\ncard: {out['card']} | {smi} | torch {out['torch']}")
    hdr = f"{'L':>6} {'pass':>8} | {'sdpa bf16':>10} {'ours bf16':>10} {'sdpa/ours':>9} | {'sdpa f32':>9} {'ours f32':>9} | {'strat:32':>9} {'ours f32/strat':>14} {'ours bf16/strat':>15}"
    print(hdr)
    print("-" * len(hdr))
    fmt = lambda x: f"{x:10.3f}" if x is not None else f"{'-':>10}"
    rat = lambda a, b: f"{a / b:9.2f}" if a is not None and b is not None else f"{'-':>9}"
    for l in sizes:
        for p in ["fwd", "fwd+bwd"]:
            sb, ob = find("torch", "exact", "bf16", l, p), find("qattn", "exact", "bf16", l, p)
            sf, of = find("torch", "exact", "f32", l, p), find("qattn", "exact", "f32", l, p)
            st = find("qattn", "stratified:32", "f32", l, p)
            print(f"{l:>6} {p:>8} | {fmt(sb)} {fmt(ob)} {rat(sb, ob)} | {fmt(sf)[1:]} {fmt(of)[1:]} | {fmt(st)[1:]} {rat(of, st):>14} {rat(ob, st):>15}")
    print("(times: median ms; sdpa/ours > 1 means ours is faster; '-' = not measured)")
    # The FlashAttention-2-style kernels (cuda/flash.cu) next to the WMMA kernel, forward bf16.
    hdr2 = f"{'L':>6} | {'sdpa bf16':>10} | {'ours wmma':>10} {'sdpa/wmma':>9} | {'ours flash':>10} {'sdpa/flash':>10} | {'ours flash2':>11} {'sdpa/flash2':>11}"
    print("\nexact bf16 forward: WMMA kernel vs flash (16 rows/warp) vs flash2 (32 rows/warp)")
    print(hdr2)
    print("-" * len(hdr2))
    for l in sizes:
        sb, ow = find("torch", "exact", "bf16", l), find("qattn", "exact", "bf16", l)
        f1, f2 = find("qattn", "exact_flash", "bf16", l), find("qattn", "exact_flash2", "bf16", l)
        print(f"{l:>6} | {fmt(sb)} | {fmt(ow)} {rat(sb, ow)} | {fmt(f1)} {rat(sb, f1):>10} | {fmt(f2):>11} {rat(sb, f2):>11}")
    print(f"qattn checks failed: {rust.get('checks_failed', 'n/a')}; wrote {a.out}")


if __name__ == "__main__":
    main()
