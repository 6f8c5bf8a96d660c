"""Secure aggregation and differential privacy end to end, through the test-bed's controller."""
import io
import json

import numpy as np
import pytest
import torch

from app.model_files import build_model
from testbed.controller import run_federation
from tests.conftest import REPO, SAMPLE

pytestmark = pytest.mark.slow


def run(tmp_path, make, out, dp_seed=0, **overrides):
    generic, clients = make(**{"max_iter": 2, "batch_size": 32, **overrides})
    result = run_federation(clients, generic, tmp_path / out, REPO / "main.py", dp_seed=dp_seed, out=io.StringIO())
    assert result.ok, result.message
    return result


def accuracy(result, site="site1"):
    return json.loads((result.outputs[site] / "metrics.json").read_text())["student"]["accuracy"]


def student(result, site="site1"):
    return torch.load(result.outputs[site] / "student.pt", weights_only=True)


def test_secure_aggregation_matches_plain_fedavg_and_hides_every_single_update(tmp_path, small_federation):
    # One round: the final student is that round's aggregate, from the same local updates.
    plain = run(tmp_path, small_federation, "plain", max_iter=1)
    secure = run(tmp_path, small_federation, "smpc", max_iter=1, use_smpc=True)
    assert abs(accuracy(secure) - accuracy(plain)) <= 0.005
    for name, value in student(plain).items():   # fixed point with 8 decimals, summed over 2 sites
        torch.testing.assert_close(student(secure)[name].float(), value.float(), rtol=0, atol=2e-6)
    updates = [d for d in secure.traffic[secure.coordinator] if d.memo and d.memo.endswith("_update")]
    assert [d.memo for d in updates] == ["r1_update"]
    assert all(d.kind == "smpc_sum" for d in updates)   # never one site's own update
    students = [(secure.outputs[site] / "student.pt").read_bytes() for site in ("site1", "site2")]
    assert students[0] == students[1]


def test_differential_privacy_clips_each_round_change_to_the_configured_norm(tmp_path, small_federation):
    torch.manual_seed(7)
    start = build_model(SAMPLE / "generic" / "student.py", {}, "student_model").state_dict()
    generic, clients = small_federation(max_iter=1, batch_size=32, init_student="start.pt",
                                        dp={"epsilon": 1e9, "delta": 1e-5, "clipping": 0.5, "noise": "gauss"})
    torch.save(start, generic / "start.pt")
    result = run_federation(clients, generic, tmp_path / "out", REPO / "main.py", out=io.StringIO())
    assert result.ok, result.message
    change = np.concatenate([(student(result)[name] - value).numpy().ravel()
                             for name, value in start.items() if value.is_floating_point()])
    assert 0.2 < np.linalg.norm(change) <= 0.5 + 1e-3   # unclipped, one round moves it by several units
    noised = [d for d in result.traffic[result.coordinator] if d.memo == "r1_update"]
    assert len(noised) == 2 and all(d.noised for d in noised)


def test_differential_privacy_noise_is_reproducible_with_the_test_bed_seed(tmp_path, small_federation):
    dp = {"epsilon": 10.0, "clipping": 1.0, "noise": "laplace", "delta": 0}
    first = run(tmp_path, small_federation, "a", dp_seed=3, dp=dp, max_iter=1)
    again = run(tmp_path, small_federation, "b", dp_seed=3, dp=dp, max_iter=1)
    other = run(tmp_path, small_federation, "c", dp_seed=4, dp=dp, max_iter=1)
    read = lambda result: (result.outputs["site1"] / "student.pt").read_bytes()  # noqa: E731
    assert read(first) == read(again) != read(other)
