"""report.md as HTML: the subset of Markdown app/report.py writes, nothing more.

Headings (``#``, ``##``), paragraphs, ``- `` lists, pipe tables with ``---``/``---:``
alignment rows, images ``![alt](file)`` on lines of their own, ``**bold**`` and
```code``` inline. All text is HTML-escaped before any markup is added, and an image
appears only when ``image_url`` maps its file name to a URL.
"""
from __future__ import annotations

import html
import re
from typing import Callable

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def image_names(markdown: str) -> list[str]:
    """The file names of the images ``markdown`` shows, in order."""
    return [match.group(2) for line in markdown.splitlines() if (match := _IMAGE.match(line.strip()))]


def to_html(markdown: str, image_url: Callable[[str], str | None]) -> str:
    blocks, lines = [], markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        block = [line]
        index += 1
        while index < len(lines) and lines[index].strip() and not lines[index].lstrip().startswith("#"):
            block.append(lines[index].strip())
            index += 1
        blocks.append(_block(block, image_url))
    return "\n".join(blocks)


def _block(lines: list[str], image_url: Callable[[str], str | None]) -> str:
    first = lines[0]
    heading = re.match(r"^(#{1,6}) (.*)$", first)
    if heading:
        level = len(heading.group(1))
        rest = _block(lines[1:], image_url) if lines[1:] else ""
        return f"<h{level}>{_inline(heading.group(2))}</h{level}>" + (f"\n{rest}" if rest else "")
    if all(line.startswith("|") for line in lines) and len(lines) >= 2:
        return _table(lines)
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>"
    if all(_IMAGE.match(line) for line in lines):
        return '<p class="figures">' + "".join(_image(line, image_url) for line in lines) + "</p>"
    return "<p>" + " ".join(_inline(line) for line in lines) + "</p>"


def _image(line: str, image_url: Callable[[str], str | None]) -> str:
    alt, name = _IMAGE.match(line).groups()
    url = image_url(name)
    if url is None:
        return ""
    return f'<img src="{html.escape(url)}" alt="{html.escape(alt)}">'


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    header, rule, *rows = [_cells(line) for line in lines]
    align = ["right" if cell.endswith(":") else "left" for cell in rule]

    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag} class="{side}">{_inline(cell)}</{tag}>'
                                for cell, side in zip(cells, align)) + "</tr>"
    return ('<div class="table"><table><thead>' + row(header, "th") + "</thead><tbody>"
            + "".join(row(cells, "td") for cells in rows) + "</tbody></table></div>")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = _CODE.sub(lambda match: f"<code>{match.group(1)}</code>", escaped)
    return _BOLD.sub(lambda match: f"<strong>{match.group(1)}</strong>", escaped)
