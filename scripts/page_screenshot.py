"""The README's screenshots of the live page: the sample federation, run by the test-bed, and the
coordinator's page after the run, in headless Chromium at a laptop's and a phone's width.

    python -m scripts.page_screenshot [--out docs]

writes OUT/page.png (1100 px wide) and OUT/page-phone.png (390 px wide); needs `chromium`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from scripts.browser import is_blank, screenshot
from testbed.controller import run_federation

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SIZES = {"page.png": (1100, 1500), "page-phone.png": (390, 1500)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def shoot(pages: dict[str, str]) -> None:
        coordinator = next(iter(pages.values()))
        for name, (width, height) in SIZES.items():
            image = screenshot(coordinator, args.out / name, width, height)
            if is_blank(image):
                raise RuntimeError(f"{name}: the screenshot is blank")
            made.append(args.out / name)

    with tempfile.TemporaryDirectory() as folder:
        result = run_federation([SAMPLE / "c1", SAMPLE / "c2"], SAMPLE / "generic", Path(folder), REPO / "main.py",
                                hold=shoot)
    if not result.ok:
        print(result.message, file=sys.stderr)
        return 1
    print("\n".join(map(str, made)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
