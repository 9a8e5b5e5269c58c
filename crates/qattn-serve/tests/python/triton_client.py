#!/usr/bin/env python3
"""A third-party client of qattn-serve: NVIDIA's tritonclient[grpc] against the KServe Open
Inference Protocol v2 endpoint (inference.GRPCInferenceService), used exactly as it is used
against Triton.

Checks: is_server_live / is_server_ready / is_model_ready, get_server_metadata,
get_model_metadata (a BYTES "text" input and FP32 outputs), and infer with a BYTES input
(InferInput("text", [n], "BYTES") from a numpy object array; tritonclient sends it in
raw_input_contents) returning FP32 "logits" and "probabilities" [n, labels] for the classifier
and "embedding" [n, hidden] for the encoder. Exits non-zero on the first failed check, prints
one JSON summary line on stdout otherwise (compared with the typed API's answers by
tests/it/python_clients.rs).

Usage: triton_client.py --addr 127.0.0.1:PORT --model NAME --labels L --encoder NAME
                        --embed-dim D [--key SECRET] [--text T ...]
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def fail(msg):
    print(f"triton_client: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def tensor_meta(meta, kind):
    return {t["name"]: (t["datatype"], [int(d) for d in t.get("shape", [])]) for t in meta.get(kind, [])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--model", required=True, help="a model with a classification head")
    ap.add_argument("--labels", type=int, required=True)
    ap.add_argument("--encoder", required=True, help="a model without a head (embeddings)")
    ap.add_argument("--embed-dim", type=int, required=True)
    ap.add_argument("--key", default=None)
    ap.add_argument("--text", action="append", default=None)
    args = ap.parse_args()
    texts = args.text or ["The service answered quickly.", "Nothing worked at all."]
    n = len(texts)
    headers = {"authorization": f"Bearer {args.key}"} if args.key else None

    client = grpcclient.InferenceServerClient(url=args.addr)

    check(client.is_server_live(headers=headers), "server not live")
    check(client.is_server_ready(headers=headers), "server not ready")
    check(client.is_model_ready(args.model, headers=headers), f"model {args.model} not ready")
    check(client.is_model_ready(args.encoder, headers=headers), f"model {args.encoder} not ready")
    unknown_ready = None
    try:
        unknown_ready = client.is_model_ready("no-such-model", headers=headers)
    except InferenceServerException as e:
        unknown_ready = f"error:{e.status()}"
    check(unknown_ready is not True, "an unknown model reports ready")

    server_meta = client.get_server_metadata(headers=headers, as_json=True)
    check(server_meta.get("name"), f"server metadata without a name: {server_meta}")

    results = {}
    for model, outputs in (
        (args.model, {"logits": args.labels, "probabilities": args.labels}),
        (args.encoder, {"embedding": args.embed_dim}),
    ):
        meta = client.get_model_metadata(model, headers=headers, as_json=True)
        check(meta.get("name") == model, f"model metadata name {meta.get('name')!r}, expected {model!r}")
        check(meta.get("versions"), f"model metadata of {model} lists no versions")
        inputs = tensor_meta(meta, "inputs")
        check("text" in inputs and inputs["text"][0] == "BYTES", f"{model}: input 'text' not BYTES: {inputs}")
        declared = tensor_meta(meta, "outputs")
        for name, width in outputs.items():
            check(name in declared, f"{model}: output {name} not declared: {declared}")
            dtype, shape = declared[name]
            check(dtype == "FP32", f"{model}: output {name} is {dtype}, expected FP32")
            check(shape[-1] == width, f"{model}: output {name} shape {shape}, expected last dim {width}")

        inp = grpcclient.InferInput("text", [n], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_))
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        res = client.infer(model, [inp], outputs=requested, headers=headers, request_id="py-triton")
        response = res.get_response()
        check(response.model_name == model, f"response model_name {response.model_name!r}")
        check(response.id == "py-triton", f"request id not echoed: {response.id!r}")
        got = {}
        for name, width in outputs.items():
            arr = res.as_numpy(name)
            check(arr is not None, f"{model}: output {name} missing")
            check(arr.dtype == np.float32, f"{model}: output {name} dtype {arr.dtype}")
            check(arr.shape == (n, width), f"{model}: output {name} shape {arr.shape}, expected {(n, width)}")
            check(np.all(np.isfinite(arr)), f"{model}: output {name} has non-finite values")
            got[name] = arr
        if "probabilities" in got:
            sums = got["probabilities"].sum(axis=1)
            check(np.allclose(sums, 1.0, atol=1e-4), f"probabilities rows sum to {sums}")
            ref = np.exp(got["logits"] - got["logits"].max(axis=1, keepdims=True))
            ref /= ref.sum(axis=1, keepdims=True)
            check(np.allclose(ref, got["probabilities"], atol=1e-5), "probabilities != softmax(logits)")
        if "embedding" in got:
            norms = np.linalg.norm(got["embedding"], axis=1)
            check(np.allclose(norms, 1.0, atol=1e-4), f"embedding norms {norms}")
        results[model] = {name: arr.tolist() for name, arr in got.items()}

    # Bad input is refused with INVALID_ARGUMENT, not a crash: an FP32 tensor named "text".
    bad_status = None
    try:
        bad = grpcclient.InferInput("text", [1], "FP32")
        bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        client.infer(args.model, [bad], headers=headers)
        fail("an FP32 'text' input was accepted")
    except InferenceServerException as e:
        bad_status = e.status()
        check("INVALID_ARGUMENT" in str(bad_status), f"FP32 text input gave {bad_status}")

    print(
        json.dumps(
            {
                "client": "tritonclient[grpc]",
                "server": server_meta.get("name"),
                "server_version": server_meta.get("version"),
                "unknown_model_ready": unknown_ready,
                "bad_input_status": bad_status,
                "results": results,
            }
        )
    )
    client.close()


if __name__ == "__main__":
    main()
