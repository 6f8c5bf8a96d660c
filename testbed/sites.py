"""The sites of a local federation: their ids, and their input/output folders as the platform builds them.

Each site's input folder is a copy of the generic folder with the site's own
folder copied on top (a site's own file wins over a generic file of the same
name), and its output folder starts empty.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


class UsageError(Exception):
    """The simulate command was given folders or options it cannot use."""


@dataclass(frozen=True)
class ClientFolders:
    """One client of the federation and the folders it reads and writes during the run."""

    id: str
    coordinator: bool
    input_dir: Path
    output_dir: Path
    log_path: Path


def check_arguments(client_dirs: list[Path], generic_dir: Path | None, output_root: Path) -> None:
    """Reject unusable folders with one message each, before anything is started."""
    if not client_dirs:
        raise UsageError("no client dirs given: pass at least one, e.g. --client-dirs sample_data/c1")
    for folder in client_dirs:
        if not folder.is_dir():
            raise UsageError(f"client dir '{folder}' does not exist or is not a folder. "
                             "Fix the path in --client-dirs.")
    if generic_dir is not None and not generic_dir.is_dir():
        raise UsageError(f"generic dir '{generic_dir}' does not exist or is not a folder. "
                         "Fix the path in --generic-dir.")
    if output_root.exists() and not output_root.is_dir():
        raise UsageError(f"output dir '{output_root}' is a file. Pass a folder to --output-dir.")
    sources = [folder.resolve() for folder in client_dirs]
    if generic_dir is not None:
        sources.append(generic_dir.resolve())
    for site_id in client_ids(client_dirs):
        for target in (output_root / site_id, output_root / f"{site_id}.failed"):
            target = target.resolve()
            clash = next((s for s in sources if s == target or target in s.parents), None)
            if clash is not None:
                raise UsageError(f"output dir '{output_root}' would overwrite the input folder '{clash}' "
                                 f"with the results of site '{site_id}'. Choose another --output-dir.")


def client_ids(client_dirs: list[Path]) -> list[str]:
    """Each client is named after its folder; repeated names get -2, -3, ... (e.g. '.' given twice)."""
    ids: list[str] = []
    for folder in client_dirs:
        base = folder.resolve().name or "client"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}-{n}"
        ids.append(candidate)
    return ids


def prepare_sites(client_dirs: list[Path], generic_dir: Path | None, output_root: Path,
                  work_dir: Path) -> list[ClientFolders]:
    """Build every site's input and (empty) output folder under work_dir; the first site coordinates."""
    # The output root (holding work_dir) may sit inside a client dir, or be one: never copy it into itself.
    skip = {output_root.resolve(), work_dir.resolve()}
    sites = []
    for index, (site_id, folder) in enumerate(zip(client_ids(client_dirs), client_dirs)):
        input_dir = work_dir / site_id / "input"
        output_dir = work_dir / site_id / "output"
        input_dir.mkdir(parents=True)
        output_dir.mkdir(parents=True)
        if generic_dir is not None:
            overlay(generic_dir, input_dir, skip)
        overlay(folder, input_dir, skip)
        sites.append(ClientFolders(site_id, index == 0, input_dir, output_dir, output_root / f"{site_id}.log"))
    return sites


def overlay(source: Path, target: Path, skip: set[Path]) -> None:
    """Copy source's content into target; what source holds replaces what target holds."""
    for entry in source.iterdir():
        if entry.resolve() in skip:
            continue
        destination = target / entry.name
        if entry.is_dir():
            if destination.exists() and not destination.is_dir():
                destination.unlink()
            destination.mkdir(exist_ok=True)
            overlay(entry, destination, skip)
        else:
            if destination.is_dir():
                shutil.rmtree(destination)
            shutil.copy2(entry, destination)
