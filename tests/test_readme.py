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
