"""The coordinator's server optimizer and the learning-rate schedule, against independent references."""
import io
import math
import shutil

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from app.aggregation import flatten
from app.config import KDConfig
from app.federation import federate, hand_over
from app.errors import ConfigError
from app.server_optimizer import ServerOptimizer
from app.training import scheduled_lr, train_local
from testbed.privacy import smpc_sum
from tests.test_site import load, shared_arrays
from tests.test_training import blobs, net


def rounds_of_averages(seed=0, rounds=4, shape=(3, 2)):
    """A sequence of (previous, averaged) pairs as a coordinator sees them, for entry "w"."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) * 0.1 for _ in range(rounds)]


def run(optimizer, changes, start):
    """Step ``optimizer`` through rounds whose sites' average moves by ``changes`` from each new global."""
    current = {"student": {"w": start.copy(), "bn.running_mean": np.zeros(2, np.float32),
                           "bn.num_batches_tracked": np.array(3)}}
    history = []
    for i, change in enumerate(changes):
        averaged = {"student": {"w": current["student"]["w"] + change,
                                "bn.running_mean": np.full(2, i + 1.0, np.float32),
                                "bn.num_batches_tracked": np.array(3 + i)}}
        current = optimizer.step(current, averaged)
        history.append(current)
    return history


def server(**settings):
    return ServerOptimizer(KDConfig(**settings), {"student": {"w"}})


def test_fedavg_is_the_average_itself():
    previous = {"student": {"w": np.zeros(2, np.float32)}}
    averaged = {"student": {"w": np.ones(2, np.float32)}}
    optimizer = server(server_optimizer="fedavg")
    assert optimizer.step(previous, averaged) is averaged and optimizer.state == {}


def test_fedavgm_is_heavy_ball_momentum_on_the_round_change():
    changes, start = rounds_of_averages(), np.zeros((3, 2), np.float32)
    history = run(server(server_optimizer="fedavgm", server_learning_rate=0.5, server_momentum=0.8), changes, start)
    # by hand: m1 = d1, m2 = 0.8 d1 + d2, ...; w_t = w_{t-1} + 0.5 m_t, where d_t is measured from w_{t-1}
    weights, momentum = start.astype(np.float64), 0
    for change in changes:
        momentum = 0.8 * momentum + change.astype(np.float64)
        weights = weights + 0.5 * momentum
    np.testing.assert_allclose(history[-1]["student"]["w"], weights, rtol=1e-6, atol=1e-7)


def test_fedadam_is_torch_adam_on_the_negated_round_change():
    changes, start = rounds_of_averages(), np.full((3, 2), 0.3, np.float32)
    history = run(server(server_optimizer="fedadam", server_learning_rate=0.01, server_beta1=0.9,
                         server_beta2=0.99, server_tau=1e-3), changes, start)
    reference = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    adam = torch.optim.Adam([reference], lr=0.01, betas=(0.9, 0.99), eps=1e-3)
    for change in changes:
        reference.grad = -torch.tensor(change, dtype=torch.float64)   # the pseudo-gradient points uphill
        adam.step()
    np.testing.assert_allclose(history[-1]["student"]["w"], reference.detach().numpy(), rtol=1e-5)


def test_fedyogi_grows_its_second_moment_no_faster_than_the_squared_change():
    changes, start = rounds_of_averages(), np.zeros((3, 2), np.float32)
    history = run(server(server_optimizer="fedyogi", server_learning_rate=0.02, server_beta1=0.5,
                         server_beta2=0.9, server_tau=0.01), changes, start)
    weights, m, v = start.astype(np.float64), 0.0, np.full((3, 2), 1e-4)
    for t, change in enumerate(changes, start=1):
        d = change.astype(np.float64)
        m = 0.5 * m + 0.5 * d
        v = v - 0.1 * d * d * np.sign(v - d * d)
        weights = weights + 0.02 * (m / (1 - 0.5 ** t)) / (np.sqrt(v) + 0.01)
    np.testing.assert_allclose(history[-1]["student"]["w"], weights, rtol=1e-5)


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_running_statistics_and_counters_take_the_average_not_a_step(kind):
    history = run(server(server_optimizer=kind), rounds_of_averages(), np.zeros((3, 2), np.float32))
    last = history[-1]["student"]
    np.testing.assert_array_equal(last["bn.running_mean"], np.full(2, 4.0, np.float32))
    assert last["bn.num_batches_tracked"] == 6 and last["w"].dtype == np.float32


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_a_restored_state_continues_exactly(kind):
    changes, start = rounds_of_averages(rounds=5), np.zeros((3, 2), np.float32)
    whole = run(server(server_optimizer=kind), changes, start)
    first = server(server_optimizer=kind)
    middle = run(first, changes[:3], start)[-1]
    saved = torch.load(_saved(first.state_dict()), weights_only=True)   # as checkpoint.pt holds it
    second = server(server_optimizer=kind)
    second.load_state_dict(saved)
    rest = run(second, changes[3:], middle["student"]["w"])
    np.testing.assert_array_equal(rest[-1]["student"]["w"], whole[-1]["student"]["w"])


def test_models_it_does_not_optimize_pass_through():
    optimizer = server(server_optimizer="fedadam")
    teacher = {"w": np.ones(2, np.float32)}
    stepped = optimizer.step({"teacher": {"w": np.zeros(2, np.float32)}}, {"teacher": teacher})
    assert stepped["teacher"] is teacher and optimizer.state == {}


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


# --------------------------------------------------------------------------- learning-rate schedule

def test_cosine_schedule_and_warmup_by_hand():
    cosine = KDConfig(learning_rate=1.0, lr_schedule="cosine")
    assert [scheduled_lr(cosine, k / 4, (k + 1) / 4) for k in range(4)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)])
    warm = KDConfig(learning_rate=2.0, lr_schedule="constant", lr_warmup=0.5)
    assert [scheduled_lr(warm, k / 4, (k + 1) / 4) for k in range(4)] == pytest.approx([1.0, 2.0, 2.0, 2.0])
    both = KDConfig(learning_rate=1.0, lr_schedule="cosine", lr_warmup=0.5)
    assert [scheduled_lr(both, k / 4, (k + 1) / 4) for k in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_train_local_steps_with_the_scheduled_rate_across_rounds():
    """Round 2 of 2 (2 batches per epoch) steps at the last half of the cosine; the teacher's training
    (rounds=0) keeps the constant rate."""
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"]))
    try:
        config = KDConfig(batch_size=32, learning_rate=0.1, lr_schedule="cosine")
        train_local(net(), blobs(n=64), config, epochs=1, round_index=1, rounds=2)
        train_local(net(), blobs(n=64), config, epochs=1, round_index=1)
    finally:
        hook.remove()
    assert seen == pytest.approx([0.05, 0.05 - 0.05 * math.cos(math.pi / 4), 0.1, 0.1])


# --------------------------------------------------------------------------- in the federation

def sites(folder, n_train=300, **overrides):
    return [load(folder, f"c{i}", f"c{i}", n_train=n_train, **overrides) for i in (1, 2)]


def test_resuming_from_the_coordinators_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    settings = {"server_optimizer": "fedadam", "server_learning_rate": 0.01, "lr_schedule": "cosine",
                "baseline": True, "max_iter": 3}
    whole = sites(tmp_path / "whole", **settings)
    federate(whole)
    part = sites(tmp_path / "part", **settings)
    federate(part, stop_after=2)
    for site in ("c1", "c2"):
        shutil.copy(tmp_path / "part" / f"out_{site}" / "unfinished" / "checkpoint.pt",
                    tmp_path / f"{site}.pt")
    rest = [load(tmp_path / "rest", f"c{i}", f"c{i}", n_train=300, init_student="resume.pt", **settings)
            for i in (1, 2)]
    shutil.copy(tmp_path / "c1.pt", rest[0].input_dir / "resume.pt")   # the coordinator's own checkpoint
    federate(rest)
    assert [row["round"] for row in rest[0].rounds] == [3]
    for name in ("student", "baseline"):
        expected = whole[0].models[name].state_dict()
        for key, value in rest[1].models[name].state_dict().items():
            assert torch.equal(value, expected[key]), (name, key)

    shutil.copy(tmp_path / "c2.pt", rest[0].input_dir / "resume.pt")   # a participant's: no server state
    again = load(tmp_path / "rest", "c1", "c1", n_train=300, init_student="resume.pt", **settings)
    with pytest.raises(ConfigError, match="init_student: 'resume.pt' holds no fedadam state for the baseline, "
                                          "student: it was written by a participant"):
        again.make_plan()


def test_the_server_optimizer_gets_the_same_mean_in_the_clear_from_the_secure_sum_and_under_dp(tmp_path):
    """Equal sample counts, so FedAvg's weights equal DP's; no noise here (the test-bed's is tested there)."""
    server = {"server_optimizer": "fedavgm", "server_momentum": 0.9, "max_iter": 2}

    def global_student(federation, controller=hand_over):
        federate(federation, controller)
        return flatten({"student": shared_arrays(federation[0])}, floats_only=True)
    runs = {"plain": global_student(sites(tmp_path / "plain", **server)),
            "smpc": global_student(sites(tmp_path / "smpc", use_smpc=True, **server),
                                   lambda payloads, memo: smpc_sum(payloads, exponent=8)),
            "dp": global_student(sites(tmp_path / "dp", dp={"epsilon": 1.0, "clipping": 1.0}, **server))}
    fedavg = global_student(sites(tmp_path / "fedavg", max_iter=2))
    for wire in ("smpc", "dp"):
        np.testing.assert_allclose(runs[wire], runs["plain"], rtol=0, atol=1e-5)
    assert np.abs(fedavg - runs["plain"]).max() > 1e-3   # momentum made a difference
