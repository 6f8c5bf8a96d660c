"""Headless Chromium for the live page's tests and its README screenshot: the rendered DOM of a URL,
a screenshot of it, and plain timed GETs."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking flags Chromium waits on connections nothing here answers.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
# Virtual time lets the page's fetch of status.json (and of report.html) finish before the DOM is taken.
VIRTUAL_TIME_MS = 8000
BROWSER_TIMEOUT = 90.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _chromium(url: str, *options: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium not installed (apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="kd-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *options, url],
                              capture_output=True, text=True, timeout=BROWSER_TIMEOUT, stdin=subprocess.DEVNULL)


@dataclass
class Page:
    """What the browser rendered: the DOM and the text of elements by id."""

    dom: str

    def text(self, element_id: str) -> str:
        match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', self.dom, re.S)
        assert match, f"no element #{element_id} in the rendered page"
        return re.sub(r"<[^>]+>", "", match.group(2)).strip()

    def element(self, element_id: str) -> str:
        """The element's opening tag and content (up to its closing tag)."""
        match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>.*?</\1>', self.dom, re.S)
        assert match, f"no element #{element_id} in the rendered page"
        return match.group(0)


def render(url: str) -> Page:
    done = _chromium(url, "--dump-dom")
    assert done.returncode == 0 and "<html" in done.stdout, f"chromium failed on {url}: {done.stderr[-2000:]}"
    return Page(done.stdout)


def screenshot(url: str, path: Path, width: int = 1100, height: int = 1800) -> Image.Image:
    done = _chromium(url, f"--screenshot={path}", f"--window-size={width},{height}")
    assert done.returncode == 0 and path.is_file(), f"chromium made no screenshot of {url}: {done.stderr[-2000:]}"
    image = Image.open(path)
    image.load()
    return image


def is_blank(image: Image.Image) -> bool:
    """One colour (or nearly: a few anti-aliasing shades) over the whole image."""
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return colours is not None and len(colours) < 16


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes, float]:
    """Status, body and seconds taken of one GET."""
    started = time.perf_counter()
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            return answer.status, answer.read(), time.perf_counter() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read(), time.perf_counter() - started
