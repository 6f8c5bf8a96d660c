"""What one round's update costs on the wire for a large model: plain, secure aggregation (SMPC) and DP.

    python -m bench.payloads [--model resnet18|sample-student] [--sites 2]

For a ResNet-18-size student (torchvision's resnet18 with 10 classes: 11.2M parameters), each
path is timed as the app and the engine run it, in this one process:

  encode  a site's ``Wire.encode`` and the engine's serialization of it (``pickle``, or
          ``json.dumps`` for SMPC and DP): what a site does before the controller pulls it;
  decode  what the coordinator does with what the controller delivers: the engine's
          deserialization and ``Wire.decode`` into the global model (FedAvg, the secure
          sum divided by the sample count, the mean noised change).

The controller's own part (summing, noising) is not timed: the platform does it. Bytes are
those of one site's upload, of what the coordinator receives, and of the global model's
broadcast (pickled on every path). The SMPC and DP rows are compared with the JSON of
float64 ``.tolist()`` vectors the app sent before (``before``), measured in the same run.

The last line is ``smpc_encode_vs_before=<x> smpc_decode_vs_before=<y> smpc_bytes_vs_before=<z>
dp_encode_vs_before=<u> dp_bytes_vs_before=<v>`` (times as fast, bytes as a fraction).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from FeatureCloud.app.engine.app import _deserialize_incoming, _serialize_outgoing

from app.aggregation import flatten, to_arrays
from app.model_files import build_model
from app.profile import parameter_count
from app.transport import Wire
from bench.output import save

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "payloads.txt"
SAMPLES = 5000


def make_model(name: str) -> torch.nn.Module:
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10)
    return build_model(ROOT / "sample_data" / "generic" / "student.py", {}, "student_model")


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def site_models(model: torch.nn.Module, sites: int, seed: int) -> tuple[dict, list[dict]]:
    """The round's global model and each site's locally changed copy of it."""
    previous = {"student": to_arrays(model.state_dict())}
    rng = np.random.default_rng(seed)
    local = [{"student": {name: value + rng.normal(0, 1e-3, value.shape).astype(value.dtype)
                          if value.dtype.kind == "f" else value
                          for name, value in previous["student"].items()}} for _ in range(sites)]
    return previous, local


def measure(wire: Wire, previous: dict, local: list[dict], sites: int, seed: int) -> dict:
    """Encode (one site), bytes up and down, decode (coordinator) of one round on this wire."""
    is_json = wire.smpc or wire.dp
    encode, sent = timed(lambda: _serialize_outgoing(wire.encode("site1", local[0], SAMPLES, previous), is_json))
    payloads = [sent] + [_serialize_outgoing(wire.encode(f"site{i + 1}", models, SAMPLES, previous), is_json)
                         for i, models in enumerate(local[1:], start=1)]
    received = controller(wire, payloads, seed)
    decode, global_models = timed(lambda: wire.decode(
        _deserialize_incoming(received[0], True) if wire.smpc else
        [_deserialize_incoming(body, is_json) for body in received], previous, sites))
    broadcast = len(pickle.dumps(global_models))
    return {"encode": encode, "up": len(sent), "down": sum(map(len, received)), "decode": decode,
            "broadcast": broadcast}


def controller(wire: Wire, payloads: list[bytes], seed: int) -> list[bytes]:
    """What the controller delivers to the coordinator, in the form the test-bed's controller writes it
    (numpy instead of its pure-Python loops, for speed; the same numbers)."""
    if not (wire.smpc or wire.dp):
        return payloads
    vectors = [np.asarray(json.loads(body)) for body in payloads]
    if wire.dp:
        rng = np.random.default_rng(seed)
        vectors = [vector + rng.normal(0, 1e-3, vector.shape) for vector in vectors]
    if wire.smpc:
        scale = 10 ** wire.controller_exponent
        total = sum(np.trunc(vector * scale).astype(np.int64) for vector in vectors) / scale
        return [json.dumps(total.tolist()).encode()]
    return [json.dumps(vector.tolist()).encode() for vector in vectors]


def before(wire: Wire, previous: dict, local: list[dict]) -> dict:
    """The JSON the app sent before (float64 vectors), encoded and read back the same way."""
    if wire.dp:
        vector = flatten(local[0], floats_only=True) - flatten(previous, floats_only=True)
    else:
        vector = np.append(flatten(local[0]) * SAMPLES, SAMPLES)
    encode, sent = timed(lambda: _serialize_outgoing(vector.tolist(), True))
    decode, _ = timed(lambda: np.asarray(_deserialize_incoming(sent, True), dtype=np.float64))
    return {"encode": encode, "up": len(sent), "decode": decode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["resnet18", "sample-student"], default="resnet18",
                        help="the student whose update travels (default resnet18: 11.2M parameters)")
    parser.add_argument("--sites", type=int, default=2, help="sites sending an update (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/payloads.txt)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_model(args.model)
    previous, local = site_models(model, args.sites, seed=0)
    numbers = flatten(previous).size
    rows = {"plain (pickle)": measure(Wire(), previous, local, args.sites, 0),
            "SMPC": measure(Wire(smpc=True), previous, local, args.sites, 0),
            "DP": measure(Wire(dp=True), previous, local, args.sites, 0)}
    old = {"SMPC": before(Wire(smpc=True), previous, local), "DP": before(Wire(dp=True), previous, local)}
    mb = 1e6
    lines = [f"Update payloads, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
             f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}",
             f"student: {args.model}, {parameter_count(model):,} parameters, {numbers:,} numbers in its state_dict; "
             f"{args.sites} sites of {SAMPLES} samples", "",
             f"{'path':<22}{'encode s':>10}{'up MB':>10}{'to coord. MB':>14}{'decode s':>10}{'broadcast MB':>14}"]
    for name, row in rows.items():
        lines.append(f"{name:<22}{row['encode']:>10.2f}{row['up'] / mb:>10.1f}{row['down'] / mb:>14.1f}"
                     f"{row['decode']:>10.2f}{row['broadcast'] / mb:>14.1f}")
    for name, row in old.items():
        lines.append(f"{name + ' before':<22}{row['encode']:>10.2f}{row['up'] / mb:>10.1f}{'':>14}"
                     f"{row['decode']:>10.2f}{'':>14}")
    ratios = {"smpc_encode_vs_before": old["SMPC"]["encode"] / rows["SMPC"]["encode"],
              "smpc_decode_vs_before": old["SMPC"]["decode"] / rows["SMPC"]["decode"],
              "smpc_bytes_vs_before": rows["SMPC"]["up"] / old["SMPC"]["up"],
              "dp_encode_vs_before": old["DP"]["encode"] / rows["DP"]["encode"],
              "dp_bytes_vs_before": rows["DP"]["up"] / old["DP"]["up"]}
    lines += ["", "before: the float64 .tolist() JSON the SMPC and DP paths sent until now; its decode is the engine's "
                  "json.loads and numpy of one site's vector (an SMPC sum has the same size)",
              " ".join(f"{name}={value:.2f}" for name, value in ratios.items())]
    save(lines, args.results)


if __name__ == "__main__":
    main()
