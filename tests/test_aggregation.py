"""FedAvg over whole state_dicts: weights, float buffers, integer counters, checks."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from app.aggregation import Update, batchnorm_keys, fedavg, flatten, to_arrays, to_state_dict, unflatten
from app.errors import FederationError
from app.transport import Wire
from testbed.privacy import smpc_sum


def bn_net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    net.train()
    net(torch.randn(16, 4) * (seed + 1))   # moves the running statistics
    net(torch.randn(16, 4))
    return net


def test_weighted_average_of_parameters_and_float_buffers():
    nets, samples = [bn_net(0), bn_net(1), bn_net(2)], [100, 300, 600]
    updates = [Update(f"s{i}", to_arrays(n.state_dict()), k) for i, (n, k) in enumerate(zip(nets, samples))]
    averaged = fedavg(updates)
    weights = np.array(samples) / sum(samples)
    for name in ["0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"]:
        expected = sum(w * update.weights[name] for w, update in zip(weights, updates))
        np.testing.assert_allclose(averaged[name].numpy(), expected, rtol=1e-6)
        assert averaged[name].dtype == torch.float32


@pytest.mark.parametrize("samples, expected", [((10, 30), 3), ((30, 10), 2)])
def test_integer_counters_are_averaged_but_stay_whole_numbers(samples, expected):
    nets = [bn_net(0), bn_net(1)]
    nets[1](torch.randn(8, 4))   # one more batch: counter 3 instead of 2
    updates = [Update(f"s{i}", to_arrays(n.state_dict()), k) for i, (n, k) in enumerate(zip(nets, samples))]
    counter = fedavg(updates)["1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.item() == expected   # 2.75 -> 3, 2.25 -> 2


def test_single_update_is_returned_unchanged_and_loads_into_the_model():
    net = bn_net(0)
    averaged = fedavg([Update("only", to_arrays(net.state_dict()), 5)])
    fresh = bn_net(9)
    fresh.load_state_dict(averaged)
    for name, tensor in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor)


def test_array_round_trip_copies():
    net = bn_net(0)
    arrays = to_arrays(net.state_dict())
    arrays["0.weight"][:] = 0
    assert torch.count_nonzero(net.state_dict()["0.weight"]) > 0
    assert torch.equal(to_state_dict(to_arrays(net.state_dict()))["0.bias"], net.state_dict()["0.bias"])


def test_missing_tensor_names_the_site():
    a, b = to_arrays(bn_net(0).state_dict()), to_arrays(bn_net(1).state_dict())
    del b["1.running_var"]
    with pytest.raises(FederationError,
                       match="site s2's student differs from site s1's: missing \\['1.running_var'\\]"):
        fedavg([Update("s1", a, 1), Update("s2", b, 1)])


def test_shape_mismatch_names_the_tensor_and_both_shapes():
    a = to_arrays(bn_net(0).state_dict())
    b = to_arrays(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(3)).state_dict())
    with pytest.raises(FederationError,
                       match=r"site s2's student tensor '0.weight' has shape \[5, 4\], site s1's has \[3, 4\]"):
        fedavg([Update("s1", a, 1), Update("s2", b, 1)])


def test_non_finite_values_name_site_and_tensor():
    a, b = to_arrays(bn_net(0).state_dict()), to_arrays(bn_net(1).state_dict())
    b["0.bias"][1] = np.nan
    with pytest.raises(FederationError, match="site s2 sent non-finite values in '0.bias'.*learning_rate"):
        fedavg([Update("s1", a, 1), Update("s2", b, 1)])


def test_empty_site_is_rejected():
    a = to_arrays(bn_net(0).state_dict())
    with pytest.raises(FederationError, match="site s1 sent an update trained on 0 samples"):
        fedavg([Update("s1", a, 0)])


def test_no_updates():
    with pytest.raises(FederationError, match="no site sent an update"):
        fedavg([])


def test_flatten_round_trip_keeps_shapes_dtypes_and_order():
    models = {"student": to_arrays(bn_net(0).state_dict()), "baseline": to_arrays(bn_net(1).state_dict())}
    vector = flatten(models)
    assert vector.dtype == np.float64 and vector.size == sum(v.size for m in models.values() for v in m.values())
    back = unflatten(vector, models)
    for model, weights in models.items():
        assert list(back[model]) == list(weights)
        for name, value in weights.items():
            assert back[model][name].dtype == value.dtype
            np.testing.assert_array_equal(back[model][name], value)


def test_floats_only_leaves_counters_to_the_template():
    models = {"student": to_arrays(bn_net(0).state_dict())}
    vector = flatten(models, floats_only=True)
    assert vector.size == sum(v.size for v in models["student"].values()) - 1   # num_batches_tracked
    back = unflatten(vector + 1.0, models, floats_only=True)
    assert back["student"]["1.num_batches_tracked"] == models["student"]["1.num_batches_tracked"]
    np.testing.assert_allclose(back["student"]["0.bias"], models["student"]["0.bias"] + 1.0)


def test_a_vector_of_the_wrong_length_is_a_federation_error():
    models = {"student": to_arrays(bn_net(0).state_dict())}
    with pytest.raises(FederationError, match="the sites' students differ"):
        unflatten(np.zeros(3), models)


def test_batchnorm_keys_are_exactly_the_batchnorm_entries():
    assert batchnorm_keys(bn_net(0)) == {"1.weight", "1.bias", "1.running_mean", "1.running_var",
                                         "1.num_batches_tracked"}


def test_secure_sum_of_fixed_point_integers_is_the_controllers_own_sum_bit_for_bit():
    """Sites send int(x·10^8) themselves and the controller scales by 10^0: the coordinator's model is
    exactly what the controller's own fixed point of the float vectors [n·w..., n] gave."""
    rng = np.random.default_rng(3)
    models = [{"student": {"w": rng.normal(0, 0.1, (40, 30)).astype(np.float32),
                           "running_var": rng.uniform(0, 500, 30).astype(np.float32),
                           "num_batches_tracked": np.array(7 + i)}} for i in range(3)]
    samples = [500, 1234, 77]
    previous = models[0]
    wire = Wire(smpc=True, exponent=8)
    assert wire.controller_exponent == 0
    sent = [wire.encode(f"c{i}", m, n, previous) for i, (m, n) in enumerate(zip(models, samples))]
    assert all(isinstance(value, int) for value in sent[0])
    got = wire.decode(smpc_sum(sent, wire.controller_exponent), previous, sites=3)

    as_floats = [np.append(flatten(m) * n, n).tolist() for m, n in zip(models, samples)]
    summed = np.asarray(smpc_sum(as_floats, 8), dtype=np.float64)
    expected = unflatten(summed[:-1] / summed[-1], previous)
    for name, value in expected["student"].items():
        assert got["student"][name].dtype == value.dtype
        np.testing.assert_array_equal(got["student"][name], value)
    assert len(json.dumps(sent[0])) < 0.75 * len(json.dumps(as_floats[0]))


def test_a_dp_change_travels_with_nine_significant_digits():
    """float32 weights change by float32-sized steps: 9 digits keep the change to 5e-9 of itself,
    and the JSON the controller noises is a third smaller than with float64's 17 digits."""
    rng = np.random.default_rng(4)
    previous = {"student": {"w": rng.normal(0, 0.1, 5000).astype(np.float32), "n": np.array(3)}}
    local = {"student": {"w": previous["student"]["w"] + rng.normal(0, 1e-3, 5000).astype(np.float32),
                         "n": np.array(4)}}
    sent = Wire(dp=True).encode("c1", local, 100, previous)
    exact = flatten(local, floats_only=True) - flatten(previous, floats_only=True)
    assert len(sent) == 5000   # the float entries only; counters keep the global value
    np.testing.assert_allclose(sent, exact, rtol=5e-9, atol=0)
    assert all(float(f"{value:.9g}") == value for value in sent)   # JSON writes no more than 9 digits
    assert len(json.dumps(sent)) < 0.75 * len(json.dumps(exact.tolist()))


def test_channel_sums_keep_the_secure_sums_eight_digits_when_the_controller_scales_by_one():
    """The normalization's channel sums share the models' wire: sent as fixed-point integers when the
    controller is told to scale by 10^0 (sent as floats, it would truncate them to whole numbers)."""
    sums = [[784.0, 97.123456789, 41.987654321], [1568.0, 210.555555555, 88.000000019]]
    wire = Wire(smpc=True, exponent=8)
    got = wire.decode_numbers(smpc_sum([wire.encode_numbers(values) for values in sums], wire.controller_exponent))
    assert got == smpc_sum(sums, 8)   # what the controller makes of the floats at 10^8
    assert got[1] != int(got[1]) and abs(got[1] - (97.123456789 + 210.555555555)) < 1e-7
    with_dp = Wire(smpc=True, dp=True, exponent=8)   # noised sites send floats; the controller scales
    assert with_dp.encode_numbers(sums[0]) == sums[0] and with_dp.decode_numbers([1.5]) == [1.5]
