"""IAM-OnDB's splits: the paper's random 90/5/5 split, the official form lists, normalisation.

See :mod:`datamodules.iam` for the two protocols (``data.iam_split``) and their numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from datamodules.base import DataError
from datamodules.iam_format import BASE_URL

SPLIT_SEED = 2017
"""Default seed of the random 90/5/5 split (``numpy.random.default_rng(SPLIT_SEED)``)."""
MIN_POINTS = 300
OFFICIAL_LISTS = ("trainset", "testset_v", "testset_t", "testset_f")


def form_of(line: str) -> str:
    """The form id of a line name: ``a01-020x-03`` -> ``a01-020x``."""
    return line.rsplit("-", 1)[0]


def read_form_list(path: str | Path) -> list[str]:
    """Form ids of an official split file (one per line, after optional white space)."""
    text = Path(path).read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_splits(
    sequences: Mapping[str, np.ndarray],
    *,
    min_points: int = MIN_POINTS,
    seed: int = SPLIT_SEED,
    mode: str = "random",
    official_lists: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[str]]:
    """Line names of ``train`` / ``valid`` / ``test``; only lines with >= ``min_points`` points.

    ``random``: the qualifying names, sorted, permuted by ``np.random.default_rng(seed)``; train
    = first ``n * 90 // 100``, valid = next ``n * 5 // 100``, test = the rest (for n = 11,628:
    10,465 / 581 / 582). Each split's names are returned in permuted order.
    ``official``: ``official_lists`` maps ``trainset``, ``testset_v``, ``testset_t``,
    ``testset_f`` to form ids; train = lines of trainset + testset_t + testset_f, valid = lines of
    testset_v, test = valid (the protocol has no held-out test set). Names are sorted.
    """
    keep = sorted(name for name, points in sequences.items() if len(points) >= min_points)
    if mode == "random":
        n = len(keep)
        order = np.random.default_rng(seed).permutation(n)
        names = [keep[i] for i in order]
        n_train, n_valid = n * 90 // 100, n * 5 // 100
        return {
            "train": names[:n_train],
            "valid": names[n_train : n_train + n_valid],
            "test": names[n_train + n_valid :],
        }
    if mode == "official":
        if official_lists is None or any(k not in official_lists for k in OFFICIAL_LISTS):
            raise DataError(
                f"the official split needs the form lists {', '.join(OFFICIAL_LISTS)} "
                f"(from {BASE_URL}/<name>.txt)"
            )
        forms = {k: set(official_lists[k]) for k in OFFICIAL_LISTS}
        train_forms = forms["trainset"] | forms["testset_t"] | forms["testset_f"]
        valid = [n for n in keep if form_of(n) in forms["testset_v"]]
        return {
            "train": [n for n in keep if form_of(n) in train_forms],
            "valid": valid,
            "test": list(valid),
        }
    raise DataError(f"data.iam_split={mode!r} is unknown; choose 'random' or 'official'")


def normalisation(points: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) of dx and dy over all points: two (2,) float64."""
    total, square, count = np.zeros(2), np.zeros(2), 0
    for p in points:
        xy = p[:, :2].astype(np.float64)
        total += xy.sum(0)
        count += len(xy)
    if count == 0:
        raise DataError("the training split holds no points; cannot normalise")
    mean = total / count
    for p in points:
        square += ((p[:, :2].astype(np.float64) - mean) ** 2).sum(0)
    std = np.sqrt(square / count)
    std[std == 0] = 1.0
    return mean, std


__all__ = [
    "MIN_POINTS",
    "OFFICIAL_LISTS",
    "SPLIT_SEED",
    "build_splits",
    "form_of",
    "normalisation",
    "read_form_list",
]
