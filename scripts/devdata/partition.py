"""Split one labelled dataset into per-site index sets, IID or label-skewed (Dirichlet).

The Dirichlet split (Hsu et al. 2019) draws, for every class, the share of that
class each site receives from Dir(alpha): a large alpha gives nearly IID sites,
alpha = 0.1 gives sites that see mostly one or two classes.
"""
from __future__ import annotations

import numpy as np


def split_iid(labels: np.ndarray, sites: int, per_site: int, seed: int) -> list[np.ndarray]:
    """``sites`` disjoint random index sets of ``per_site`` samples each."""
    needed = sites * per_site
    if needed > len(labels):
        raise ValueError(f"{sites} sites × {per_site} samples need {needed}, only {len(labels)} available")
    order = np.random.default_rng(seed).permutation(len(labels))[:needed]
    return [np.sort(part) for part in np.split(order, sites)]


def dirichlet_shares(num_classes: int, sites: int, alpha: float, seed: int) -> np.ndarray:
    """[classes, sites] matrix: the share of each class every site receives (rows sum to 1)."""
    return np.random.default_rng(seed).dirichlet(np.full(sites, alpha), size=num_classes)


def split_by_shares(labels: np.ndarray, shares: np.ndarray, total: int, seed: int) -> list[np.ndarray]:
    """Draw about ``total`` samples, class c distributed over sites by ``shares[c]``.

    Each class contributes in proportion to its frequency in ``labels``, so the
    union of the sites looks like the original data while each site is skewed.
    """
    rng = np.random.default_rng(seed)
    classes, sites = shares.shape
    parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
    fraction = min(1.0, total / len(labels))
    for label in range(classes):
        pool = rng.permutation(np.flatnonzero(labels == label))
        take = int(round(len(pool) * fraction))
        bounds = np.round(np.cumsum(shares[label]) * take).astype(int)
        for site, chunk in enumerate(np.split(pool[:take], bounds[:-1])):
            parts[site].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def site_indices(split: str, pool_labels: np.ndarray, test_labels: np.ndarray, sites: int,
                 train_per_site: int, test_per_site: int, alpha: float,
                 seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Index sets into the training pool and the test set, one per site (``split``: iid or dirichlet)."""
    if split == "iid":
        return (split_iid(pool_labels, sites, train_per_site, seed),
                split_iid(test_labels, sites, test_per_site, seed + 1))
    # A site's test set is skewed like its training set: it is that site's own data.
    shares = dirichlet_shares(int(pool_labels.max()) + 1, sites, alpha, seed)
    return (split_by_shares(pool_labels, shares, sites * train_per_site, seed),
            split_by_shares(test_labels, shares, sites * test_per_site, seed + 1))
