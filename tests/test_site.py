"""One site's whole life without communication, on small real MNIST."""
import json
import shutil

import numpy as np
import pytest
import torch

from app.aggregation import batchnorm_keys, flatten
from app.errors import ConfigError, DataError, FederationError
from app.federation import federate
from app.site import Site
from testbed.privacy import smpc_sum
from tests.conftest import site_input


def load(tmp_path, name="c1", source="c1", n_train=600, **overrides):
    folder = site_input(tmp_path / f"in_{name}", source=source, n_train=n_train, **overrides)
    return Site.load(folder, tmp_path / f"out_{name}", name, log=lambda message: None)


def test_two_sites_agree_train_aggregate_and_write_every_output(tmp_path):
    sites = [load(tmp_path, "c1", "c1", max_iter=2), load(tmp_path, "c2", "c2", max_iter=2)]
    federate(sites, write=True)
    assert all(site.teacher_evaluation.accuracy > 0.9 for site in sites)
    assert [r["round"] for r in sites[0].rounds] == [1, 2]
    out = tmp_path / "out_c1"
    for name in ["student.pt", "student_torchscript.pt", "student.onnx", "metrics.json", "rounds.csv",
                 "accuracy.png", "loss.png", "confusion_matrix.png", "federation_accuracy.png", "report.md",
                 "config.yml", "log.txt", "checkpoint.pt"]:
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    assert written["student"]["accuracy"] == sites[0].evaluations["student"].accuracy > 0.5
    assert written["compression"]["parameters_ratio"] > 10
    assert written["federation"]["test_samples"] == 400
    weights = torch.load(out / "student.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in sites[1].student.state_dict().items())
    participant = tmp_path / "out_c2"   # the same student; the federation's view is the coordinator's alone
    assert (participant / "student.pt").read_bytes() == (out / "student.pt").read_bytes()
    assert "federation" not in json.loads((participant / "metrics.json").read_text())
    assert not (participant / "federation_accuracy.png").exists()


def test_teacher_runs_only_to_cache_its_logits_and_evaluate(tmp_path):
    site = load(tmp_path, max_iter=3)
    site.adopt_plan(site.make_plan())
    calls = []
    site.teacher.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    site.prepare_teacher()
    assert sum(calls) == len(site.train) + len(site.test)
    while site.next_round:
        site.apply_global(site.aggregate([site.train_round()], sites=1))
    assert sum(calls) == len(site.train) + len(site.test)   # no teacher call during the rounds


def test_participant_with_different_rounds_is_told_which_key(tmp_path):
    coordinator, participant = load(tmp_path, "c1", max_iter=3), load(tmp_path, "c2", max_iter=4)
    with pytest.raises(FederationError, match="site c2's config.yml disagrees with the coordinator's on "
                                              "max_iter: max_iter: 4 here, 3 at the coordinator"):
        participant.adopt_plan(coordinator.make_plan())


def test_site_specific_file_names_may_differ_and_the_plan_gives_every_site_the_same_start(tmp_path):
    coordinator = load(tmp_path, "c1")
    folder = site_input(tmp_path / "in_c2", source="c2", train_dataset="mine.npz", device="cpu")
    (folder / "train.npz").rename(folder / "mine.npz")
    participant = Site.load(folder, tmp_path / "out_c2", "c2", log=lambda message: None)
    with torch.no_grad():
        next(participant.student.parameters()).add_(1.0)   # as if it had started elsewhere
    participant.adopt_plan(coordinator.make_plan())
    assert (participant.config.train_dataset, participant.config.device) == ("mine.npz", "cpu")
    start = coordinator.student.state_dict()
    assert all(torch.equal(value, start[key]) for key, value in participant.student.state_dict().items())


def test_different_student_architecture_is_named(tmp_path):
    coordinator = load(tmp_path, "c1")
    folder = site_input(tmp_path / "in_c2", source="c2")
    student_file = folder / "student.py"   # this site's own, wider copy of the student
    student_file.write_text(student_file.read_text().replace("channels: int = 8", "channels: int = 12"))
    participant = Site.load(folder, tmp_path / "out_c2", "c2", log=lambda message: None)
    with pytest.raises(FederationError, match="site c2's student \\(student.py\\) differs from the "
                                              "coordinator's: 'body.0.weight' has shape \\[12, 1, 3, 3\\] here"):
        participant.adopt_plan(coordinator.make_plan())


def test_the_baseline_learns_without_the_teacher(tmp_path):
    """Another teacher changes the distilled student, never the baseline trained beside it."""
    runs = {run: load(tmp_path / run, n_train=300, baseline=True, max_iter=1) for run in ("teacher", "other")}
    with torch.no_grad():
        for parameter in runs["other"].teacher.parameters():
            parameter.mul_(-1.0)
    for site in runs.values():
        federate([site])
    students, baselines = ({run: site.models[name].state_dict() for run, site in runs.items()}
                           for name in ("student", "baseline"))
    assert any(not torch.equal(value, students["other"][key]) for key, value in students["teacher"].items())
    assert all(torch.equal(value, baselines["other"][key]) for key, value in baselines["teacher"].items())


def test_missing_teacher_weights_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="teacher_weights: not set"):
        load(tmp_path, teacher_weights=None)


def test_files_outside_the_input_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train_dataset: '../secret.npz' — must name a file inside the input folder"):
        load(tmp_path, train_dataset="../secret.npz")
    with pytest.raises(ConfigError, match="train_dataset: 'data/../../secret.npz' — must name a file inside"):
        load(tmp_path, train_dataset="data/../../secret.npz")


def test_links_in_the_input_folder_are_followed_wherever_they_point(tmp_path):
    """The test-bed links a site's files into its input folder, and a user may link a file in too:
    the name in config.yml decides (inside the folder), not where the link leads."""
    folder = site_input(tmp_path / "in", train_dataset="data/train.npz", teacher_model="models/teacher.py")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    (folder / "train.npz").rename(elsewhere / "train.npz")
    (folder / "teacher.py").rename(elsewhere / "models" / "teacher.py")
    (folder / "data").mkdir()
    (folder / "data" / "train.npz").symlink_to(elsewhere / "train.npz")        # a file linked in
    (folder / "models").symlink_to(elsewhere / "models", target_is_directory=True)   # a folder linked in
    site = Site.load(folder, tmp_path / "out", "c1", log=lambda message: None)
    assert len(site.train) == 600
    assert not (elsewhere / "models" / "__pycache__").exists()


def shared_arrays(site, model="student"):
    """The site's ``model`` as it travels (FedBN's local layers aside): the global model after a round."""
    return site._shared({model: site.models[model]})[model]


def test_secure_sum_gives_plain_fedavg_within_the_fixed_point_precision(tmp_path):
    plain = [load(tmp_path / "plain", f"c{i}", f"c{i}", n_train=300 + 200 * i, max_iter=1) for i in (1, 2)]
    secure = [load(tmp_path / "smpc", f"c{i}", f"c{i}", n_train=300 + 200 * i, max_iter=1, use_smpc=True)
              for i in (1, 2)]
    federate(plain)
    assert secure[0].wire.controller_exponent == 0   # the sites send fixed-point integers already
    federate(secure, lambda payloads, memo: smpc_sum(payloads, secure[0].wire.controller_exponent))
    expected, got = shared_arrays(plain[0]), shared_arrays(secure[0])
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6)
        assert got[name].dtype == value.dtype


def test_differential_privacy_sends_the_round_change_and_adds_the_mean_change(tmp_path):
    sites = [load(tmp_path, f"c{i}", f"c{i}", max_iter=1, dp={"epsilon": 1.0, "clipping": 1.0}) for i in (1, 2)]
    seen = {}

    def controller(payloads, memo):   # no noise here: the test-bed's noise is tested with the test-bed
        seen.update(memo=memo, start=flatten(sites[0].previous, floats_only=True), sent=payloads)
        return payloads
    federate(sites, controller)
    assert seen["memo"] == "r1"
    assert all(len(change) == len(seen["start"]) for change in seen["sent"])
    local = [seen["start"] + np.asarray(change) for change in seen["sent"]]
    np.testing.assert_allclose(flatten({"student": shared_arrays(sites[0])}, floats_only=True),
                               np.mean(local, axis=0), atol=1e-6)


def test_fedbn_resumes_every_site_from_its_own_checkpoint(tmp_path):
    def sites(run, **overrides):
        return [load(tmp_path / run, f"c{i}", f"c{i}", fedbn=True, max_iter=3, **overrides) for i in (1, 2)]
    whole = sites("whole")
    federate(whole)
    federate(sites("part"), stop_after=2)
    for i in (1, 2):   # each site's own checkpoint goes into its own input folder
        shutil.copy(tmp_path / "part" / f"out_c{i}" / "unfinished" / "checkpoint.pt",
                    site_input(tmp_path / "rest" / f"in_c{i}", source=f"c{i}") / "resume.pt")
    rest = sites("rest", init_student="resume.pt")
    federate(rest)
    assert [row["round"] for row in rest[1].rounds] == [3]
    for resumed, uninterrupted in zip(rest, whole):
        expected = uninterrupted.student.state_dict()
        for key, value in resumed.student.state_dict().items():
            assert torch.equal(value, expected[key]), (resumed.name, key)


def test_a_site_resuming_fedbn_from_another_round_is_stopped(tmp_path):
    part = [load(tmp_path / "part", f"c{i}", f"c{i}", fedbn=True, max_iter=3) for i in (1, 2)]
    federate(part, stop_after=2)
    for i, run_round in ((1, 2), (2, 1)):   # site 2 was given its checkpoint of round 1
        source = tmp_path / "part" / f"out_c{i}" / "unfinished" / "checkpoint.pt"
        saved = torch.load(source, weights_only=True)
        saved["round"] = run_round
        torch.save(saved, site_input(tmp_path / "rest" / f"in_c{i}", source=f"c{i}") / "resume.pt")
    rest = [load(tmp_path / "rest", f"c{i}", f"c{i}", fedbn=True, max_iter=3, init_student="resume.pt")
            for i in (1, 2)]
    plan = rest[0].make_plan()
    rest[0].adopt_plan(plan)
    with pytest.raises(FederationError, match="init_student 'resume.pt' of site c2 holds round 1, the "
                                              "coordinator's round 2"):
        rest[1].adopt_plan(plan)


def test_a_different_teacher_trained_by_the_federation_is_named(tmp_path):
    coordinator = load(tmp_path, "c1", "c1", teacher_rounds=1)
    other = load(tmp_path, "c2", "c2", teacher_rounds=1, teacher_model="student.py", teacher_weights=None)
    with pytest.raises(FederationError, match=r"site c2's teacher \(student.py\) differs from the coordinator's"):
        other.adopt_plan(coordinator.make_plan())


def test_a_site_whose_own_teacher_weights_are_replaced_by_the_federations_start_says_so(tmp_path):
    logs = []
    coordinator = load(tmp_path, "c1", "c1", teacher_rounds=1)
    other = Site.load(site_input(tmp_path / "in_c2", source="c2", teacher_rounds=1), tmp_path / "out_c2", "c2",
                      log=logs.append)
    plan = coordinator.make_plan()
    other.adopt_plan(plan)   # the same teacher.pt everywhere: nothing to say
    assert not [line for line in logs if "teacher_rounds" in line]
    with torch.no_grad():
        next(other.teacher.parameters()).add_(1.0)   # as if c2 had its own teacher weights
    other.adopt_plan(plan)
    assert "the federated teacher starts from the coordinator's weights, not from this site's teacher.pt" in logs[-1]
    assert all(torch.equal(value, torch.from_numpy(plan["teacher"][key]))
               for key, value in other.teacher.state_dict().items())


def test_noise_never_leaves_a_negative_running_variance_or_non_finite_outputs(tmp_path):
    sites = [load(tmp_path, f"c{i}", f"c{i}", max_iter=1, dp={"epsilon": 1.0, "clipping": 1.0}) for i in (1, 2)]
    federate(sites, lambda payloads, memo: [list(np.asarray(change) - 100.0) for change in payloads])
    state = sites[0].student.state_dict()
    variances = [key for key in state if key.endswith("running_var")]
    assert variances and all(bool((state[key] == 0).all()) for key in variances)
    # everything else takes the noised change as it came: only variances are projected
    assert all(bool((state[key].abs() > 50).all()) for key in state if key.endswith("running_mean"))
    with torch.no_grad():
        assert torch.isfinite(sites[0].student.eval()(torch.rand(4, 1, 28, 28))).all()


def test_fedbn_keeps_batchnorm_local_and_averages_the_rest(tmp_path):
    sites = [load(tmp_path, f"c{i}", f"c{i}", fedbn=True, max_iter=2) for i in (1, 2)]
    federate(sites)
    first, second = (site.student.state_dict() for site in sites)
    batchnorm = batchnorm_keys(sites[0].student)
    assert batchnorm and all(key.startswith("body.1.") or key.startswith("body.5.") for key in batchnorm)
    for key, value in first.items():
        if key in batchnorm and value.is_floating_point():
            assert not torch.equal(value, second[key]), key
        elif key not in batchnorm:
            assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("normalize, scale, warned", [("imagenet", 255.0, True), ("none", 255.0, False),
                                                      ("federated", 1.0, False)])
def test_float_images_far_above_1_while_normalizing_are_used_as_they_are_with_a_warning(
        tmp_path, normalize, scale, warned):
    folder = site_input(tmp_path / "in", n_train=64, n_test=32, normalize=normalize)
    with np.load(folder / "train.npz") as archive:
        floats = archive["images"].astype(np.float32) / 255 * scale
        np.savez(folder / "train.npz", images=floats, labels=archive["labels"])
    site = Site.load(folder, tmp_path / "out", "c1", log=lambda message: None)
    site.adopt_plan(site.make_plan())
    found = [warning for warning in site.warnings if "float images reach 255" in warning]
    assert bool(found) == warned
    if warned:
        assert found[0].startswith("train_dataset 'train.npz': float images reach 255 while normalize is set")
        assert "They are used as they are" in found[0] and "divide them by 255" in found[0]
        _, images, _ = next(site.train.batches(64, normalized=False))
        assert float(images.max()) == 255.0


def test_image_size_and_channels_that_do_not_describe_the_arrays_are_named(tmp_path):
    with pytest.raises(DataError, match=r"train_dataset 'train.npz': the arrays hold images of 1×28×28 "
                                        r"\(channels×height×width\), but config.yml asks for 3×28×28. image_size "
                                        r"and channels resize and convert image files only"):
        load(tmp_path, n_train=64, channels=3)
