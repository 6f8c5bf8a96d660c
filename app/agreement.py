"""What the sites agree on before the plan, from every site's survey of its own data.

A survey (``Site.survey``) says which class folders a site's image folders hold, whether it
also reads arrays, and whether any of its training images is stored in colour. From all of
them the coordinator fixes the class list (``agree_classes``) and the channels
(``agree_channels``) and broadcasts them with the plan, so the same class name has the same
index at every site and every site feeds the student images with the same channels.
"""
from __future__ import annotations

from app.errors import FederationError
from app.images import order_classes


def agree_classes(surveys: list[dict], configured: list[str] | None) -> list[str] | None:
    """The federation's class list: ``configured`` (config ``classes``) if given, else the union of
    every site's class folders in numeric order when all are integers, else alphabetical. None
    when no site reads image folders: arrays keep their integer labels."""
    folder_sites = [survey for survey in surveys if survey["classes"] is not None]
    if configured is not None:
        for survey in folder_sites:
            unknown = sorted(set(survey["classes"]) - set(configured))
            if unknown:
                raise FederationError(
                    f"site {survey['site']} has class folder '{unknown[0]}', which is not in classes "
                    f"({', '.join(configured)}). Add it to classes in config.yml or move that folder away.")
        return list(configured)
    if not folder_sites:
        return None
    array_sites = [survey["site"] for survey in surveys if survey["arrays"]]
    if array_sites:
        raise FederationError(
            f"site {folder_sites[0]['site']} reads image folders, whose labels are their folder names, and site "
            f"{array_sites[0]} reads arrays, whose labels are numbers: which number is which folder is unknown. "
            "Set classes in config.yml to the class names in the order of the array labels (label 0 first).")
    _refuse_near_twins(folder_sites)
    return order_classes({name for survey in folder_sites for name in survey["classes"]})


def _refuse_near_twins(surveys: list[dict]) -> None:
    """Folder names that differ only in letter case, surrounding spaces or an integer's leading zeros
    ('Cat' and 'cat', '1' and '01') would become two classes, each site lacking the other's: almost
    surely one class spelled two ways, whose labels would be split silently."""
    seen: dict[str, tuple[str, str]] = {}   # spelling-free key -> (name, site)
    for survey in surveys:
        for name in survey["classes"]:
            stripped = name.strip()
            key = str(int(stripped)) if stripped.isdigit() else stripped.casefold()
            other, site = seen.setdefault(key, (name, survey["site"]))
            if other != name:
                raise FederationError(
                    f"site {site} has class folder '{other}' and site {survey['site']} has '{name}': they differ "
                    "only in letter case, spaces or leading zeros, so they would be two classes. Rename one so "
                    "both sites spell the class the same, or list the classes in config.yml (classes: [...]).")


def agree_channels(surveys: list[dict], configured: int | None) -> int | None:
    """The channels every image folder is decoded to: ``configured`` (config ``channels``) if given,
    else 3 if any site has a training image in colour, else 1. None when no site reads image
    folders: arrays keep their channels."""
    if configured is not None:
        return configured
    colours = [survey["colour"] for survey in surveys if survey["colour"] is not None]
    if not colours:
        return None
    return 3 if any(colours) else 1
