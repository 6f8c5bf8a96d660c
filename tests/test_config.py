"""Config parsing and validation: defaults, sections, all-at-once error reports."""
from pathlib import Path

import pytest
import yaml

from app.config import (SECTION, KDConfig, differences, effective_document, load_config,
                        parse_config)
from app.errors import ConfigError


TEACHER = {"teacher_weights": "teacher.pt"}


def write(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_defaults_are_the_measured_ones(tmp_path):
    """The training defaults bench/convergence.py chose (README: Defaults); rounds as in the original app."""
    config = load_config(write(tmp_path, f"{SECTION}:\n  teacher_weights: t.pt\n"))
    assert (config.batch_size, config.learning_rate, config.max_iter) == (32, 0.008, 10)
    assert (config.temperature, config.alpha, config.loss) == (4.0, 0.8, "kl")
    assert (config.server_optimizer, config.lr_schedule, config.lr_warmup) == ("fedavg", "constant", 0.0)
    assert (config.teacher_model, config.student_model) == ("teacher.py", "student.py")
    assert config.teacher_weights == "t.pt"


def test_server_learning_rate_defaults_to_the_rate_of_its_optimizer():
    """An Adam-like server step moves each weight by about the rate itself, FedAvg's by the average change
    times it: one default cannot fit both, so an unset rate is the one measured for the optimizer."""
    rates = {name: parse_config({**TEACHER, "server_optimizer": name}).server_learning_rate
             for name in ("fedavg", "fedavgm", "fedadam", "fedyogi")}
    assert rates == {"fedavg": 1.0, "fedavgm": 0.3, "fedadam": 0.1, "fedyogi": 0.03}
    assert parse_config({**TEACHER, "server_optimizer": "fedadam", "server_learning_rate": None}).server_learning_rate \
        == 0.1
    assert parse_config({**TEACHER, "server_optimizer": "fedadam", "server_learning_rate": 2}).server_learning_rate == 2
    document = effective_document({SECTION: {**TEACHER, "server_optimizer": "fedyogi"}},
                                  parse_config({**TEACHER, "server_optimizer": "fedyogi"}))
    assert document[SECTION]["server_learning_rate"] == 0.03   # the rate used, for the next app and the report
    with pytest.raises(ConfigError, match="server_optimizer: 'adam' — must be one of"):
        parse_config({**TEACHER, "server_optimizer": "adam"})


def test_flat_file_without_section_is_accepted(tmp_path):
    config = load_config(write(tmp_path, "alpha: 0.25\nmax_iter: 3\nteacher_epochs: 2\n"))
    assert (config.alpha, config.max_iter) == (0.25, 3)


def test_a_site_needs_a_teacher_source():
    with pytest.raises(ConfigError, match="teacher_weights: not set, and teacher_rounds and teacher_epochs are 0"):
        parse_config({SECTION: None})
    for source in ({"teacher_rounds": 2}, {"teacher_epochs": 1}, TEACHER):
        parse_config({SECTION: source})
    assert parse_config({SECTION: None}, require_teacher=False).teacher_weights is None


def test_yaml_exponent_without_dot_is_read_as_number(tmp_path):
    # PyYAML (YAML 1.1) parses 1e-3 as the string '1e-3'
    text = f"{SECTION}:\n  learning_rate: 1e-3\n  teacher_weights: t.pt\n"
    assert load_config(write(tmp_path, text)).learning_rate == 0.001


def test_every_problem_is_reported_at_once_with_key_value_and_allowed_range(tmp_path):
    path = write(tmp_path, f"{SECTION}:\n  alpha: 1.5\n  batch_size: 0\n  loss: kld\n  temprature: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "config.yml has 4 problems" in message
    assert "alpha: 1.5 — must be a number between 0 and 1" in message
    assert "batch_size: 0 — must be a whole number ≥ 1" in message
    assert "loss: 'kld' — must be one of: kl, mse, soft_ce" in message
    assert "temprature: unknown key — did you mean 'temperature'?" in message


@pytest.mark.parametrize("text, expected", [
    ("max_iter: 2.5", "max_iter: 2.5 — must be a whole number"),
    ("max_iter: yes", "max_iter: True — must be a whole number"),
    ("learning_rate: fast", "learning_rate: 'fast' — must be a number > 0"),
    ("learning_rate: 0", "learning_rate: 0 — must be a number > 0"),
    ("temperature: -1", "temperature: -1 — must be a number > 0"),
    ("device: gpu", "device: 'gpu' — must be one of: auto, cpu, cuda"),
    ("teacher_args: 3", "teacher_args: 3 — must be a mapping of keyword arguments"),
    ("optimizer: rmsprop", "optimizer: 'rmsprop' — must be one of: adam, sgd"),
    ("weight_decay: .inf", "weight_decay: inf — must be finite, and a number ≥ 0"),
    ("dp: {epsilon: .inf}", "dp.epsilon: inf — must be finite, and a number > 0"),
    ("alpha: .nan", "alpha: nan — must be a number between 0 and 1"),
])
def test_wrong_types_and_values(text, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({SECTION: yaml.safe_load(text)})


def test_unknown_key_far_from_any_name_points_to_readme():
    with pytest.raises(ConfigError, match="zzz: unknown key — see the README"):
        parse_config({SECTION: {"zzz": 1}})


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=f"not found at {tmp_path / 'config.yml'}"):
        load_config(tmp_path / "config.yml")


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, f"{SECTION}:\n  alpha: 0.5\n   batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(path)


def test_misspelled_section_is_named():
    with pytest.raises(ConfigError, match="Rename 'fc_knowledge_distilation' to 'fc_knowledge_distillation'"):
        parse_config({"fc_knowledge_distilation": {"alpha": 0.1}})


def test_other_apps_sections_without_ours():
    with pytest.raises(ConfigError, match="no 'fc_knowledge_distillation' section \\(found: fc_deep\\)"):
        parse_config({"fc_deep": {"max_iter": 3}})


@pytest.mark.parametrize("document, expected", [
    (None, "the file is empty"),
    ([1, 2], "expected a mapping of settings, found list"),
    ({SECTION: "alpha"}, "must hold indented 'key: value' settings"),
])
def test_malformed_documents(document, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(document)


def test_effective_document_keeps_other_sections_and_fills_defaults():
    original = {"fc_deep": {"max_iter": 3}, SECTION: {"alpha": 0.2, **TEACHER}}
    document = effective_document(original, parse_config(original))
    assert document["fc_deep"] == {"max_iter": 3}
    assert document[SECTION]["alpha"] == 0.2
    assert document[SECTION]["batch_size"] == 32


def test_effective_document_of_flat_file_gets_a_section():
    flat = {"alpha": 0.2, **TEACHER}
    document = effective_document(flat, parse_config(flat))
    assert list(document) == [SECTION]


def test_differences_lists_each_key():
    a, b = parse_config({"max_iter": 3, **TEACHER}), parse_config({"max_iter": 4, **TEACHER})
    assert differences(a, b) == ["max_iter: 3 here, 4 at the coordinator"]
    assert differences(a, b, ignore=("max_iter",)) == []


def test_documented_template_lists_every_key_with_its_default():
    document = yaml.safe_load((Path(__file__).parents[1] / "config.yml").read_text())
    assert list(document[SECTION]) == list(KDConfig.model_fields)
    assert parse_config(document) == KDConfig.model_validate(TEACHER)


def test_privacy_and_strategy_settings():
    config = parse_config({**TEACHER, "use_smpc": True, "aggregation": "fedprox", "mu": 0.1,
                           "dp": {"epsilon": 2, "noise": "laplace", "delta": 0}})
    assert config.use_smpc and config.aggregation == "fedprox" and config.mu == 0.1
    assert (config.dp.epsilon, config.dp.noise, config.dp.clipping) == (2.0, "laplace", 1.0)
    assert parse_config(TEACHER).dp is None


@pytest.mark.parametrize("dp, expected", [
    ({"epsilon": 0}, "dp.epsilon: 0 — must be a number > 0"),
    ({"nois": "gauss"}, "dp.nois: unknown key — did you mean 'noise'?"),
    ({"delta": 0}, "dp.delta: 0 — gauss noise needs a delta > 0"),
    ({"noise": "uniform"}, "dp.noise: 'uniform' — must be one of: gauss, laplace"),
    (3, "dp: 3 — must be a mapping with epsilon, delta, clipping and noise, or empty"),
])
def test_differential_privacy_problems_name_the_nested_key(dp, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({**TEACHER, "dp": dp})
