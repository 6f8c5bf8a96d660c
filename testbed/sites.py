"""The sites of a local federation: their ids, and their input/output folders as the platform builds them.

A site's input folder holds the generic folder's files with the site's own on top (a
site's own file wins over a generic file of the same name), as links, not copies, so
setting up a site costs the same whatever its data weigh:

    <work>/<site>/sources/generic -> <generic dir>     (absolute links to the user's folders)
    <work>/<site>/sources/own     -> <client dir>
    <work>/<site>/input/config.yml -> ../sources/own/config.yml
    <work>/<site>/input/models     -> ../sources/generic/models     (a folder only one side has)
    <work>/<site>/input/data/      a real folder where both sides have one (its sub-folders real too),
                                   its files linked

The input's links are relative and point into ``../sources/<name>/``, so the same input
folder works for a local process (``sources/`` links to the user's folders) and in a
container (the user's folders are mounted read-only at ``/mnt/sources/<name>``). The
output folder starts empty.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

GENERIC, OWN = "generic", "own"   # the names of a site's sources, in the order they are laid on each other


class UsageError(Exception):
    """The simulate command was given folders or options it cannot use."""


@dataclass(frozen=True)
class ClientFolders:
    """One client of the federation and the folders it reads and writes during the run. ``sources`` are the
    user's folders its input links point into (``<input_dir>/../sources/<name>``), by name."""

    id: str
    coordinator: bool
    input_dir: Path
    output_dir: Path
    log_path: Path
    sources: dict[str, Path] = field(default_factory=dict)


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


def unwritable(output_root: Path, error: OSError) -> UsageError:
    """The one message for an output folder the test-bed cannot write to (full disk, read-only, no permission)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "Free some space on that disk"
    else:
        fix = "Make it writable"
    return UsageError(f"cannot write to output dir '{output_root}' ({error.strerror or error}). "
                      f"{fix}, or choose another --output-dir.")


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
    """Build every site's input (links) and (empty) output folder under work_dir; the first site coordinates."""
    # The output root (holding work_dir) may sit inside a client dir, or be one: never link it into an input.
    skip = {output_root.resolve(), work_dir.resolve()}
    sites = []
    for index, (site_id, folder) in enumerate(zip(client_ids(client_dirs), client_dirs)):
        site_dir = work_dir / site_id
        sources = {GENERIC: generic_dir.resolve()} if generic_dir is not None else {}
        sources[OWN] = folder.resolve()
        entries = [_entries(source, skip) for source in sources.values()]
        try:
            input_dir, output_dir = site_dir / "input", site_dir / "output"
            input_dir.mkdir(parents=True)
            output_dir.mkdir(parents=True)
            (site_dir / "sources").mkdir()
            for name, source in sources.items():
                (site_dir / "sources" / name).symlink_to(source, target_is_directory=True)
            link_tree(input_dir, [Path("..") / "sources" / name for name in sources], list(sources.values()),
                      entries, skip)
        except OSError as error:
            raise unwritable(output_root, error) from error
        sites.append(ClientFolders(site_id, index == 0, input_dir, output_dir, output_root / f"{site_id}.log",
                                   sources))
    return sites


def link_tree(target: Path, via: list[Path], sources: list[Path], listed: list[list[Path]], skip: set[Path],
              whole_folders: bool = True) -> None:
    """Fill target with relative links to the ``listed`` entries of ``sources`` (later sources win on equal
    names), each link reaching its source through ``via`` (a path relative to target standing for that
    source). A folder that several sources hold (or that holds something to skip) becomes a real folder
    whose entries are linked the same way, except that inside it every folder is a real one and only
    files are links: a program walking a folder (os.walk) does not descend into linked folders below
    the one it starts from. ``whole_folders`` is False there."""
    holders: dict[str, list[int]] = {}
    for index, entries in enumerate(listed):
        for entry in entries:
            holders.setdefault(entry.name, []).append(index)
    for name, indices in holders.items():
        folders = [i for i in indices if (sources[i] / name).is_dir()]
        winner = indices[-1]
        # The folders laid on each other: the winner and the folders of the same name below it, down to a file.
        merged = [i for i in folders if i > max((i for i in indices if i not in folders), default=-1)]
        if winner in folders and (len(merged) > 1 or not whole_folders or _holds(sources[winner] / name, skip)):
            (target / name).mkdir()
            inner = [sources[i] / name for i in merged]
            link_tree(target / name, [Path("..") / via[i] / name for i in merged], inner,
                      [_entries(folder, skip) for folder in inner], skip, whole_folders=False)
        else:
            (target / name).symlink_to(via[winner] / name)


def _entries(folder: Path, skip: set[Path]) -> list[Path]:
    try:
        return [entry for entry in sorted(folder.iterdir()) if entry.resolve() not in skip]
    except OSError as error:
        raise UsageError(f"cannot read '{error.filename or folder}': {error.strerror or error}. Make the client "
                         "and generic folders readable.") from error


def _holds(folder: Path, skip: set[Path]) -> bool:
    return any(path == folder.resolve() or folder.resolve() in path.parents for path in skip)
