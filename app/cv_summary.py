"""The cross-validated result of one site: its folds' accuracies, their mean and standard deviation.

Built from the folds' own metrics (the dicts written to ``<dir>/<fold>/metrics.json``), so the summary
is a function of those files: the teacher's, the distilled student's and the baseline's accuracy per
fold at this site and, at the coordinator, over the federation (each fold's accuracy over all sites,
weighted by test-set size, as each fold's ``federation`` reports it) and at every site. The standard
deviation is the sample one (n − 1): how much the estimate moves from one split of the data to another.
"""
from __future__ import annotations

import statistics

ROLES = ("teacher", "student", "baseline")
KEYS = tuple(f"{role}_accuracy" for role in ROLES)


def summarize(site: str, folder: str, folds: dict[str, dict]) -> dict:
    """The summary of ``folds`` ({fold name: that fold's metrics}) of ``site``, read from ``folder``."""
    rows = [{"fold": fold, **{f"{role}_accuracy": metrics[role]["accuracy"] if role in metrics else None
                              for role in ROLES},
             "train_samples": metrics["data"]["train_samples"], "test_samples": metrics["data"]["test_samples"]}
            for fold, metrics in folds.items()]
    summary = {"site": site, "cross_validation": {"dir": folder, "folds": list(folds), "per_fold": rows,
                                                  **spread(rows)}}
    federations = {fold: metrics["federation"] for fold, metrics in folds.items() if "federation" in metrics}
    if federations:
        summary["cross_validation"]["federation"] = _federation(federations)
    return summary


def spread(rows: list[dict]) -> dict:
    """Mean and standard deviation over ``rows`` of every accuracy (None where a row has none)."""
    return {"mean": {key: _over(rows, key, statistics.fmean) for key in KEYS},
            "std": {key: _over(rows, key, statistics.stdev) if len(rows) > 1 else None for key in KEYS}}


def _over(rows: list[dict], key: str, statistic) -> float | None:
    values = [row[key] for row in rows]
    return None if any(value is None for value in values) else statistic(values)


def _federation(federations: dict[str, dict]) -> dict:
    rows = [{"fold": fold, **{key: federation[key] for key in KEYS}, "test_samples": federation["test_samples"]}
            for fold, federation in federations.items()]
    names = [entry["site"] for entry in next(iter(federations.values()))["sites"]]
    sites = []
    for name in names:
        site_rows = [{"fold": fold, **{key: entry[key] for key in KEYS}}
                     for fold, federation in federations.items()
                     for entry in federation["sites"] if entry["site"] == name]
        sites.append({"site": name, "per_fold": site_rows, **spread(site_rows)})
    return {"per_fold": rows, **spread(rows), "sites": sites}
