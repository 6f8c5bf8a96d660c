"""Per-round checkpoints, so an interrupted federation loses at most one round.

While a run is going, every round's global models are saved to
``<output>/unfinished/checkpoint.pt``, among the outputs still to be published
(``files.publish``): the folder of an earlier successful run is left alone until
this run has succeeded too. A checkpoint holds tensors and numbers only (loadable
with ``weights_only=True``); naming it in ``init_student`` resumes after its round
with the same result as an uninterrupted run; the coordinator's checkpoint also
holds the server optimizer's state, which that needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from app import files
from app.errors import ModelError
from app.torch_files import load_tensors

FORMAT = "fc-knowledge-distillation checkpoint 1"
SERVER = "server"   # the server optimizer's state (absent from checkpoints written before it existed)


def write(output_dir: Path, round_number: int, models: Mapping[str, nn.Module], server: Mapping) -> Path:
    """The global ``models`` after ``round_number`` rounds, and the ``server`` optimizer's state
    (``ServerOptimizer.state_dict``: empty at a participant, which never steps it)."""
    path = output_dir / files.UNFINISHED / files.CHECKPOINT
    files.save_state_dict({"format": FORMAT, "round": round_number, SERVER: server,
                           **{name: model.state_dict() for name, model in models.items()}}, path)
    return path


def read(path: Path) -> dict | None:
    """The checkpoint stored at ``path``, or None when the file is something else (e.g. a plain
    state_dict, or unreadable: the caller's weights loader then explains what is wrong)."""
    try:
        saved = load_tensors(path)
    except Exception:  # noqa: BLE001 — reported by the weights loader with the file named
        return None
    return saved if isinstance(saved, dict) and saved.get("format") == FORMAT else None


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(f"init_student '{path.name}': its {name} does not fit student_model "
                         f"({first[1].strip() if len(first) > 1 else first[0]}). It was saved by a run "
                         "with another student_model or student_args; use that run's settings.") from None
