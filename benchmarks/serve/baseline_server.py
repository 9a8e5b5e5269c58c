#!/usr/bin/env python3
"""Python baseline for `cargo xtask bench serve`: FastAPI + uvicorn + HF transformers (torch, CPU).

The stack the qattn server replaces, doing the same work per request as `qattn serve`:

  POST /embed     {"text": "..."} -> {"embedding": [...], "dim": 384}
                  mean-pooled (attention-mask weighted), L2-normalised last_hidden_state of
                  --embed-dir (sentence-transformers/all-MiniLM-L6-v2), like sentence-transformers
  POST /classify  {"text": "..."} -> {"label": "...", "scores": [...]}
                  softmax of AutoModelForSequenceClassification(--classify-dir): a checkpoint
                  written once by qattn's save_pretrained (`qattn-load save-classifier`), so
                  both servers run the same weights and head
  GET  /health    {"status": "ok"}

One text per request, tokenised without padding and truncated at 512 tokens, f32, eval mode,
`torch.inference_mode()`, attention implementation `sdpa` (transformers' default).
Each uvicorn worker is a separate process with its own copy of both models; the endpoints are
`async def` and run the forward pass inline, so a worker runs one inference at a time with
torch.set_num_threads(max(1, cores // workers)) (no oversubscription of the cores).

Usage: baseline_server.py --embed-dir DIR --classify-dir DIR [--host 127.0.0.1] --port P
                          [--workers 1] [--threads N]
Ready when GET /health answers 200 (uvicorn logs at level "warning" only, no access log).
Offline: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set; the models come from local folders.
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Configuration reaches the worker processes (uvicorn re-imports this module in each) through
# the environment.
ENV_EMBED = "QATTN_BASELINE_EMBED_DIR"
ENV_CLASSIFY = "QATTN_BASELINE_CLASSIFY_DIR"
ENV_THREADS = "QATTN_BASELINE_THREADS"

MAX_LENGTH = 512


def build_app():
    import torch
    import torch.nn.functional as F
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    embed_dir = os.environ[ENV_EMBED]
    classify_dir = os.environ[ENV_CLASSIFY]
    torch.set_num_threads(int(os.environ.get(ENV_THREADS, "1")))

    tokenizer = AutoTokenizer.from_pretrained(embed_dir, local_files_only=True)
    # tokenizer.json of all-MiniLM-L6-v2 enables padding to 128: one text per request needs none.
    if hasattr(tokenizer, "backend_tokenizer"):
        tokenizer.backend_tokenizer.no_padding()
    cls_tokenizer = AutoTokenizer.from_pretrained(classify_dir, local_files_only=True)
    if hasattr(cls_tokenizer, "backend_tokenizer"):
        cls_tokenizer.backend_tokenizer.no_padding()
    encoder = AutoModel.from_pretrained(embed_dir, local_files_only=True).float().eval()
    classifier = (
        AutoModelForSequenceClassification.from_pretrained(classify_dir, local_files_only=True)
        .float()
        .eval()
    )
    id2label = classifier.config.id2label

    class TextIn(BaseModel):
        text: str

    app = FastAPI(title="qattn serve baseline (transformers)")

    def encode(tok, text):
        if not text:
            raise HTTPException(status_code=400, detail="text is empty")
        return tok(
            text, truncation=True, max_length=MAX_LENGTH, padding=False, return_tensors="pt"
        )

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/embed")
    async def embed(req: TextIn):
        enc = encode(tokenizer, req.text)
        with torch.inference_mode():
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = F.normalize(pooled, p=2, dim=1)[0]
        return {"embedding": emb.tolist(), "dim": emb.shape[0]}

    @app.post("/classify")
    async def classify(req: TextIn):
        enc = encode(cls_tokenizer, req.text)
        with torch.inference_mode():
            logits = classifier(**enc).logits[0]
            scores = torch.softmax(logits, dim=-1)
        best = int(scores.argmax())
        return {"label": id2label.get(best, str(best)), "scores": scores.tolist()}

    return app


# uvicorn imports `baseline_server:app` (in each worker process when --workers > 1); the
# launching script (`__main__`, or `__mp_main__` in spawned workers) never builds it.
app = build_app() if ENV_EMBED in os.environ and __name__ == "baseline_server" else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embed-dir", required=True)
    parser.add_argument("--classify-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    for flag, path in (("--embed-dir", args.embed_dir), ("--classify-dir", args.classify_dir)):
        if not os.path.isdir(path):
            parser.error(f"{flag} {path}: no such directory")
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or max(1, cores // args.workers)
    os.environ[ENV_EMBED] = os.path.abspath(args.embed_dir)
    os.environ[ENV_CLASSIFY] = os.path.abspath(args.classify_dir)
    os.environ[ENV_THREADS] = str(threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import uvicorn

    print(
        f"baseline: {args.workers} worker(s) x {threads} torch thread(s) on {cores} cores",
        flush=True,
    )
    uvicorn.run(
        "baseline_server:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
