"""Secure aggregation and differential privacy end to end, through the test-bed's controller."""
import io
import json

import numpy as np
import onnxruntime
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


def metrics(result, site="site1"):
    return json.loads((result.outputs[site] / "metrics.json").read_text())


def pooled_statistics(n_train=600):
    """Mean and standard deviation of both sites' training pixels in [0, 1], computed here from the arrays."""
    pixels = []
    for source in ("c1", "c2"):   # small_federation's site1 and site2
        with np.load(SAMPLE / source / "train.npz") as archive:
            pixels.append(archive["images"][:n_train].astype(np.float64).ravel() / 255)
    pooled = np.concatenate(pixels)
    return pooled.mean(), pooled.std()


def test_secure_aggregation_matches_plain_fedavg_and_the_coordinator_receives_only_sums(tmp_path, small_federation):
    # One round: the final student is that round's aggregate, from the same local updates and the same
    # federated normalization, whose statistics are secure-summed too.
    plain = run(tmp_path, small_federation, "plain", max_iter=1, normalize="federated")
    secure = run(tmp_path, small_federation, "smpc", max_iter=1, normalize="federated", use_smpc=True)
    assert abs(accuracy(secure) - accuracy(plain)) <= 0.005
    for name, value in student(plain).items():   # fixed point with 8 decimals, summed over 2 sites
        torch.testing.assert_close(student(secure)[name].float(), value.float(), rtol=0, atol=2e-6)
    mean, std = pooled_statistics()
    for result in (plain, secure):
        for site in ("site1", "site2"):
            used = metrics(result, site)["preprocessing"]["normalization"]
            assert used["mean"] == pytest.approx([mean], abs=1e-6) and used["std"] == pytest.approx([std], abs=1e-6)
            assert used["pixels"] == 2 * 600 * 28 * 28 and used["sites"] == 2
    # What the coordinator receives under SMPC: every update (the normalization statistics' and the
    # round's) only as the sum over all sites, never one site's own. The only other memos are the
    # survey (class folder names, whether images have colour) and the final summary (test accuracies).
    received = secure.traffic[secure.coordinator]
    updates = [d for d in received if d.memo.endswith("_update")]
    assert [d.memo for d in updates] == ["norm_update", "r1_update"]
    assert all(d.kind == "smpc_sum" for d in updates)
    assert {d.memo for d in received if d not in updates} == {"survey", "done"}
    students = [(secure.outputs[site] / "student.pt").read_bytes() for site in ("site1", "site2")]
    assert students[0] == students[1]
    # with 2 sites the coordinator can subtract its own update from the sum: every site says so
    for site in ("site1", "site2"):
        warning = "use_smpc with 2 sites: the coordinator receives the sum of every site's update"
        assert warning in (secure.outputs[site] / "log.txt").read_text()
        assert warning in (secure.outputs[site] / "report.md").read_text().split("## Warnings")[1]
    assert "## Warnings" not in (plain.outputs["site1"] / "report.md").read_text()


def test_exports_of_a_normalized_run_take_raw_images_and_predict_like_pytorch(tmp_path, small_federation):
    result = run(tmp_path, small_federation, "normalized", max_iter=1, normalize="imagenet")
    out = result.outputs["site1"]
    used = metrics(result)["preprocessing"]["normalization"]
    assert used["mean"] == pytest.approx([0.449], abs=1e-3) and used["std"] == pytest.approx([0.226], abs=1e-3)
    with np.load(SAMPLE / "c1" / "test.npz") as archive:
        raw = torch.from_numpy(archive["images"][:100]).float().unsqueeze(1) / 255   # what a deployment has
    model = build_model(SAMPLE / "generic" / "student.py", {}, "student_model")
    model.load_state_dict(student(result))   # the plain student: it takes normalized images
    with torch.no_grad():
        expected = model.eval()((raw - used["mean"][0]) / used["std"][0]).numpy()
        scripted = torch.jit.load(str(out / "student_torchscript.pt"))(raw).numpy()
        unnormalized = model(raw).numpy()
    session = onnxruntime.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": raw.numpy()})[0]
    for logits in (scripted, onnx):
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
        assert (logits.argmax(1) == expected.argmax(1)).all()
    assert np.abs(expected - unnormalized).max() > 0.1   # the exports did not just skip the normalization


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
