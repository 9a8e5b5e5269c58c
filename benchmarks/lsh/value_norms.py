"""How much a ||v||-proportional proposal could lower the variance of lsh's remainder draws,
measured on all-MiniLM-L6-v2's value vectors (docs/estimators.md, section 8b).

For draws with proposal q_j proportional to ||v_j|| instead of uniform, and logits independent
of ||v||, the per-draw variance of the numerator's estimate changes by the factor
(E||v||)^2 / E||v||^2 (<= 1) and that of the normaliser by E||v|| * E[1/||v||] (>= 1). This
prints both per layer (min-max over heads) over the real tokens of the first 64 SST-2 dev
sentences.

    benchmarks/.venv/bin/python benchmarks/lsh/value_norms.py

Reads the model from $QATTN_HF_CACHE (Hugging Face cache layout) and SST-2 from
$QATTN_DATA_DIR/glue/SST-2/dev.tsv; needs torch and transformers (benchmarks/.venv).
"""
import csv
import glob
import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer

cache = os.environ.get("QATTN_HF_CACHE") or sys.exit("set QATTN_HF_CACHE")
data = os.environ.get("QATTN_DATA_DIR") or sys.exit("set QATTN_DATA_DIR")
snaps = glob.glob(f"{cache}/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*")
if not snaps:
    sys.exit(f"no all-MiniLM-L6-v2 snapshot under {cache}")
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(snaps[0])
model = AutoModel.from_pretrained(snaps[0])
with open(f"{data}/glue/SST-2/dev.tsv", newline="") as f:
    sentences = [r["sentence"] for r in csv.DictReader(f, delimiter="\t")][:64]
enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
values = []
for layer in model.encoder.layer:
    layer.attention.self.value.register_forward_hook(lambda m, i, o: values.append(o.detach()))
with torch.no_grad():
    model(**enc)
mask = enc["attention_mask"].bool()
heads = model.config.num_attention_heads
print(f"{int(mask.sum())} tokens; per layer, min-max over {heads} heads")
print("layer  numerator (E|v|)^2/E|v|^2  normaliser E|v|*E[1/|v|]")
for i, v in enumerate(values):
    b, l, h = v.shape
    n = v.view(b, l, heads, h // heads).norm(dim=-1)[mask]
    num = n.mean(0) ** 2 / (n**2).mean(0)
    den = n.mean(0) * (1 / n).mean(0)
    print(f"{i:5}  {num.min():.3f}-{num.max():.3f}  {den.min():.3f}-{den.max():.3f}")
