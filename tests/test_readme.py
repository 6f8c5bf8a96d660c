"""The README stays true: its code runs and its config table lists every key with its default."""
import re

import pytest
import torch
from pydantic import BaseModel

from app.config import KDConfig
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def python_block(starting_with: str) -> str:
    match = re.search(r"```python\n(" + re.escape(starting_with) + r".*?)```", README, re.S)
    assert match, f"README has no python block starting with {starting_with!r}"
    return match.group(1)


def test_python_api_example_runs_and_distills(monkeypatch):
    monkeypatch.chdir(REPO)
    namespace = {}
    exec(python_block("from app.api import distill"), namespace)
    assert namespace["history"].epochs[-1]["accuracy"] > 0.9


def test_model_example_is_a_valid_model_file(tmp_path):
    from app.model_checks import dry_run
    from app.model_files import build_model
    path = tmp_path / "student.py"
    path.write_text(python_block("import torch"))
    model = build_model(path, {}, "student_model")
    assert dry_run(model, torch.rand(2, 1, 28, 28), "student_model").shape == (2, 10)


def test_config_table_lists_every_key_with_its_default():
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", README, re.M))
    for key, field in KDConfig.model_fields.items():
        assert key in rows, f"README's config table lacks {key}"
        default, shown = field.default, rows[key].strip()
        if default is None:
            expected = "none"
        elif isinstance(default, bool):
            expected = f"`{str(default).lower()}`"
        elif isinstance(default, BaseModel):   # a nested section, shown as YAML's flow mapping
            expected = "`{" + ", ".join(f"{k}: {v}" for k, v in default.model_dump().items()) + "}`"
        else:
            expected = f"`{default}`"
        assert shown == expected, f"{key}: README says {shown}, the default is {default!r}"


@pytest.mark.parametrize("command", [
    "pip install -r requirements.txt",
    "python main.py simulate --client-dirs sample_data/c1,sample_data/c2 --generic-dir sample_data/generic "
    "--output-dir results",
])
def test_quick_start_commands_are_the_ones_ci_runs(command):
    assert command in README
    assert command in (REPO / ".ci" / "run").read_text()


def test_your_own_photos_config_is_valid_and_its_teacher_and_student_take_its_images(tmp_path):
    import yaml

    from app.config import parse_config
    from app.model_files import build_model
    section = README.split("## Your own photos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    config = parse_config(yaml.safe_load(block))
    assert (config.train_dataset, config.test_dataset, config.normalize) == ("train", "test", "imagenet")
    assert config.image_hw == (160, 160) and config.classes == ["cat", "dog"]
    # the weights file is a site's download; its keys are the architecture's, the head is new anyway
    teacher_args = {**config.teacher_args, "pretrained_weights": None}
    teacher = build_model(REPO / "models" / "torchvision_teacher.py", teacher_args, "teacher_model")
    student = build_model(REPO / "models" / "gap_cnn_student.py", config.student_args, "student_model")
    images = torch.rand(2, 3, *config.image_hw)
    with torch.no_grad():
        assert teacher.eval()(images).shape == student.eval()(images).shape == (2, len(config.classes))
