#!/usr/bin/env python3
"""A third-party client of qattn-serve: Python grpcio with server reflection, no generated stubs.

It discovers the qattn.v1.Inference service and its methods through the server's reflection
service (grpcio-reflection's ProtoReflectionDescriptorDatabase), builds request and response
message classes from the reflected descriptors (google.protobuf.message_factory), and calls
Info, Classify and Embed. Every answer is checked; the script exits non-zero on the first
failed check and prints one JSON summary line on stdout otherwise (the Rust test that runs it,
tests/it/python_clients.rs, compares the numbers with its own generated client's answers).

Usage: reflection_client.py --addr 127.0.0.1:PORT --model NAME --embed-dim D
                            [--key SECRET] [--text T ...]
"""

import argparse
import json
import math
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "qattn.v1.Inference"


def fail(msg):
    print(f"reflection_client: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--embed-dim", type=int, required=True)
    ap.add_argument("--key", default=None)
    ap.add_argument("--text", action="append", default=None)
    args = ap.parse_args()
    texts = args.text or ["The service answered quickly.", "Nothing worked at all."]
    metadata = [("authorization", f"Bearer {args.key}")] if args.key else []

    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=30)

    # 1. Discover services and methods by reflection.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    check(SERVICE in services, f"{SERVICE} not among reflected services {services}")
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name: m for m in service.methods}
    for name in ("Info", "Classify", "ClassifyStream", "Embed", "Tokenize"):
        check(name in methods, f"method {name} missing from reflected {SERVICE}: {sorted(methods)}")

    def unary(name):
        m = methods[name]
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(
            f"/{service.full_name}/{m.name}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return req_cls, (lambda req: call(req, metadata=metadata, timeout=60))

    # 2. Info
    info_req, info = unary("Info")
    resp = info(info_req())
    models = {m.name: m for m in resp.models}
    check(args.model in models, f"model {args.model!r} not in Info: {sorted(models)}")
    model = models[args.model]
    check(len(model.versions) >= 1, "Info lists no version")
    default = next((v for v in model.versions if v.is_default), model.versions[0])
    labels = list(default.labels)
    check(default.head.startswith("classification:"), f"expected a classification head, got {default.head!r}")
    n_labels = int(default.head.split(":")[1])
    check(len(labels) == n_labels, f"head {default.head} but labels {labels}")
    check(resp.max_batch_texts > 0, "Info.max_batch_texts is 0")

    # 3. Classify: a dynamically built request (nested messages through the reflected classes)
    classify_req, classify = unary("Classify")
    req = classify_req()
    for t in texts:
        inp = req.inputs.add()
        inp.text = t
    req.target.model = args.model
    req.id = "py-reflection"
    resp = classify(req)
    check(len(resp.results) == len(texts), f"{len(resp.results)} results for {len(texts)} texts")
    check(resp.id == "py-reflection", f"id not echoed: {resp.id!r}")
    check(resp.meta.model == args.model, f"meta.model {resp.meta.model!r}")
    classified = []
    for r in resp.results:
        check(len(r.scores) == n_labels, f"{len(r.scores)} scores for {n_labels} labels")
        check(r.label in labels, f"label {r.label!r} not in {labels}")
        total = sum(s.score for s in r.scores)
        check(abs(total - 1.0) < 1e-4, f"softmax scores sum to {total}")
        best = max(r.scores, key=lambda s: s.score)
        check(best.label == r.label, f"label {r.label!r} is not the arg-max {best.label!r}")
        classified.append(
            {"label": r.label, "scores": [s.score for s in r.scores], "logits": [s.logit for s in r.scores]}
        )

    # 4. Embed
    embed_req, embed = unary("Embed")
    req = embed_req()
    for t in texts:
        req.inputs.add().text = t
    req.target.model = args.model
    resp = embed(req)
    check(len(resp.embeddings) == len(texts), f"{len(resp.embeddings)} embeddings for {len(texts)} texts")
    embeddings = []
    for e in resp.embeddings:
        check(len(e.values) == args.embed_dim, f"embedding dim {len(e.values)}, expected {args.embed_dim}")
        norm = math.sqrt(sum(x * x for x in e.values))
        check(abs(norm - 1.0) < 1e-4, f"embedding not L2-normalised: norm {norm}")
        embeddings.append(list(e.values))

    # 5. A wrong key must be refused with UNAUTHENTICATED (only meaningful when keys are on).
    unauthenticated = None
    if args.key:
        try:
            channel.unary_unary(
                f"/{SERVICE}/Info",
                request_serializer=info_req.SerializeToString,
                response_deserializer=lambda b: b,
            )(info_req(), metadata=[("authorization", "Bearer not-the-key")], timeout=30)
            fail("Info with a wrong key succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"wrong key gave {e.code()}")
            unauthenticated = e.code().name

    print(
        json.dumps(
            {
                "client": "grpcio+reflection",
                "grpcio": grpc.__version__,
                "services": services,
                "methods": sorted(methods),
                "model": args.model,
                "default_version": default.version,
                "labels": labels,
                "info_models": sorted(models),
                "classify": classified,
                "embeddings": embeddings,
                "wrong_key": unauthenticated,
            }
        )
    )


if __name__ == "__main__":
    main()
