"""Where a benchmark's table goes: the terminal and its file in ``bench/results/``."""
from __future__ import annotations

from pathlib import Path


def save(lines: list[str], path: Path) -> None:
    """Print the table and keep it in ``path`` (its folder made if need be)."""
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text, end="")
