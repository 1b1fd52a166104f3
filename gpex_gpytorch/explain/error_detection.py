"""How well scores flag errors: AUROC with stratified bootstrap intervals, paired against a reference score.

The AUROC of a score for errors is the probability that a random error scores above a random
correct case (ties count one half): 0.5 is chance, 1 is a perfect ranking, and below 0.5 the score
is *lower* on errors (worse than chance in the direction it is meant to be read).

Intervals come from a stratified bootstrap: each resample draws the errors and the correct cases
with replacement, separately, so that every resample holds both classes in their observed numbers.
Every score is evaluated on the same resamples, so the difference of two AUROCs gets a paired
interval. A resample is represented by integer weights (multiplicities), and its AUROC is computed
exactly from the weights, never by materialising the resampled data: one sort of the scores, then
``O(N)`` per resample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..utils import check_positive_int, check_tensor

__all__ = ["ErrorDetectionReport", "ScoreDetection", "auroc", "error_detection_report", "weighted_auroc"]


def _check_pair(scores: Tensor, errors: Tensor, name: str = "scores") -> tuple[Tensor, Tensor]:
    check_tensor(name, scores, finite=True)
    check_tensor("errors", errors)
    errors = errors.bool().flatten().cpu()
    scores = scores.flatten().cpu()
    if scores.shape != errors.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(errors.shape)}, got {tuple(scores.shape)} (one score per example)"
        )
    return scores.double(), errors


def weighted_auroc(scores: Tensor, errors: Tensor, weights: Tensor) -> Tensor:
    r"""AUROC of ``scores`` for ``errors`` with per-example ``weights``, for a batch of weightings.

    .. math::

        \mathrm{AUROC} = \frac{\sum_{i \in E} \sum_{j \in C} w_i w_j
            \left([s_i > s_j] + \tfrac12 [s_i = s_j]\right)}{\sum_{i \in E} w_i \sum_{j \in C} w_j}

    With integer weights this is the AUROC of the data set in which example ``i`` appears ``w_i``
    times (a bootstrap resample).

    :param scores: ``(N,)``, higher meaning "more likely an error".
    :param errors: ``(N,)`` booleans.
    :param weights: ``(B, N)`` non-negative weights; both classes need positive total weight per row.
    :returns: ``(B,)`` float64.
    """
    scores, errors = _check_pair(scores, errors)
    check_tensor("weights", weights, ndim=2, finite=True)
    if weights.shape[1] != scores.shape[0]:
        raise ValueError(f"weights: expected shape (B, {scores.shape[0]}), got {tuple(weights.shape)}")
    weights = weights.double().cpu()
    if bool((weights < 0).any()):
        raise ValueError("weights: expected non-negative values")
    # Group equal scores: ties contribute one half.
    _, group = torch.unique(scores, sorted=True, return_inverse=True)  # group ranks ascending
    num_groups = int(group.max()) + 1
    w_err = torch.zeros(weights.shape[0], num_groups, dtype=torch.float64)
    w_cor = torch.zeros_like(w_err)
    w_err.index_add_(1, group[errors], weights[:, errors])
    w_cor.index_add_(1, group[~errors], weights[:, ~errors])
    below = torch.cumsum(w_cor, 1) - w_cor  # shape: (B, G) correct weight strictly below each group
    total_err, total_cor = w_err.sum(1), w_cor.sum(1)
    if bool((total_err <= 0).any() | (total_cor <= 0).any()):
        raise ValueError("weights: every row needs positive weight on both errors and correct cases")
    return (w_err * (below + 0.5 * w_cor)).sum(1) / (total_err * total_cor)


def auroc(scores: Tensor, errors: Tensor) -> float | None:
    """AUROC of ``scores`` for separating ``errors`` (True) from correct cases (False).

    0.5 is chance, 1 means every error scores above every correct case, below 0.5 the score is lower
    on errors. ``None`` when only one class is present (AUROC undefined).
    """
    scores, errors = _check_pair(scores, errors)
    if bool(errors.all()) or not bool(errors.any()):
        return None
    return float(weighted_auroc(scores, errors, torch.ones(1, scores.shape[0], dtype=torch.float64))[0])


@dataclass(frozen=True)
class ScoreDetection:
    """One score's AUROC for errors, with its bootstrap interval and its difference to the reference.

    :ivar name: the score's name.
    :ivar auroc: AUROC on the data.
    :ivar ci_low: lower end of the 95 % (or ``level``) percentile bootstrap interval.
    :ivar ci_high: upper end.
    :ivar difference: ``auroc`` minus the reference score's AUROC (0 for the reference itself).
    :ivar difference_ci_low: lower end of the paired bootstrap interval of the difference.
    :ivar difference_ci_high: upper end.
    """

    name: str
    auroc: float
    ci_low: float
    ci_high: float
    difference: float
    difference_ci_low: float
    difference_ci_high: float

    @property
    def worse_than_chance(self) -> bool:
        """The whole interval lies below 0.5: the score is reliably lower on errors."""
        return self.ci_high < 0.5

    @property
    def indistinguishable_from_chance(self) -> bool:
        """The interval contains 0.5."""
        return self.ci_low <= 0.5 <= self.ci_high

    @property
    def matches_reference(self) -> bool:
        """The paired interval of the difference to the reference contains 0."""
        return self.difference_ci_low <= 0.0 <= self.difference_ci_high

    def verdict(self) -> str:
        """A plain reading of the numbers (chance, worse than chance, against the reference)."""
        if self.worse_than_chance:
            chance = "worse than chance (lower on errors)"
        elif self.indistinguishable_from_chance:
            chance = "not distinguishable from chance"
        else:
            chance = "better than chance"
        if self.difference == 0.0 and self.difference_ci_low == 0.0 == self.difference_ci_high:
            return f"{chance}; the reference"
        if self.matches_reference:
            relation = "matches the reference (difference interval contains 0)"
        elif self.difference_ci_high < 0:
            relation = "below the reference"
        else:
            relation = "above the reference"
        return f"{chance}; {relation}"

    def summary(self) -> dict[str, float | str | bool]:
        """The fields, for JSON."""
        return {
            "name": self.name,
            "auroc": self.auroc,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "difference": self.difference,
            "difference_ci_low": self.difference_ci_low,
            "difference_ci_high": self.difference_ci_high,
            "verdict": self.verdict(),
        }


@dataclass(frozen=True)
class ErrorDetectionReport:
    """AUROC of several scores for the same errors, with stratified bootstrap intervals.

    :ivar scores: one :class:`ScoreDetection` per score, in the order given.
    :ivar reference: the score the differences are taken against (e.g. ``"max_softmax"``).
    :ivar num_errors: errors in the data.
    :ivar num_samples: examples in the data.
    :ivar num_resamples: bootstrap resamples.
    :ivar level: coverage of the intervals (0.95).
    :ivar seed: seed of the resampling.
    """

    scores: tuple[ScoreDetection, ...]
    reference: str
    num_errors: int
    num_samples: int
    num_resamples: int
    level: float
    seed: int

    def __getitem__(self, name: str) -> ScoreDetection:
        for score in self.scores:
            if score.name == name:
                return score
        raise KeyError(f"name: no score {name!r}; expected one of {[s.name for s in self.scores]}")

    def matching_reference(self) -> list[str]:
        """Names of the scores (other than the reference) whose paired difference interval contains 0."""
        return [s.name for s in self.scores if s.name != self.reference and s.matches_reference]

    def summary(self) -> dict[str, object]:
        """Everything, for JSON."""
        return {
            "reference": self.reference,
            "num_errors": self.num_errors,
            "num_samples": self.num_samples,
            "num_resamples": self.num_resamples,
            "level": self.level,
            "seed": self.seed,
            "scores": [s.summary() for s in self.scores],
            "matching_reference": self.matching_reference(),
        }


def _stratified_weights(errors: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """``(num, N)`` multiplicities of a stratified bootstrap (errors and correct cases resampled apart)."""
    weights = torch.zeros(num, errors.shape[0], dtype=torch.float64)
    ones = torch.ones(num, 1, dtype=torch.float64)
    for members in (errors.nonzero().flatten(), (~errors).nonzero().flatten()):
        draws = members[torch.randint(members.numel(), (num, members.numel()), generator=generator)]
        weights.scatter_add_(1, draws, ones.expand(num, members.numel()))
    return weights


def error_detection_report(
    scores: Mapping[str, Tensor],
    errors: Tensor,
    *,
    reference: str | None = None,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk_size: int = 250,
) -> ErrorDetectionReport:
    """AUROC of each score for ``errors``, with percentile intervals from one stratified bootstrap.

    :param scores: name → ``(N,)`` score, higher meaning "more likely an error".
    :param errors: ``(N,)`` booleans (True: the network got it wrong).
    :param reference: the score to compare the others with (paired differences); default the first.
    :param num_resamples: bootstrap resamples (shared by all scores).
    :param level: coverage of the intervals.
    :param seed: seed of the resampling (a private generator; the global RNG is untouched).
    :param chunk_size: resamples evaluated at once (bounds memory to ``chunk_size × N``).
    :raises ValueError: for no scores, an unknown reference, mismatched shapes, non-finite scores,
        or data with no errors or no correct case.
    """
    if not isinstance(scores, Mapping) or len(scores) == 0:
        raise ValueError("scores: expected a non-empty mapping of name -> (N,) tensor")
    names = list(scores)
    reference = names[0] if reference is None else reference
    if reference not in scores:
        raise ValueError(f"reference: expected one of {names}, got {reference!r}")
    for name, value in (("num_resamples", num_resamples), ("chunk_size", chunk_size)):
        check_positive_int(name, value)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a coverage strictly between 0 and 1, got {level!r}")
    checked = {name: _check_pair(value, errors, f"scores[{name!r}]") for name, value in scores.items()}
    errs = checked[reference][1]
    if bool(errs.all()) or not bool(errs.any()):
        raise ValueError(
            f"errors: expected both errors and correct cases, got {int(errs.sum())} errors of {errs.numel()}"
        )
    generator = torch.Generator().manual_seed(seed)
    boot = {name: [] for name in names}
    for start in range(0, num_resamples, chunk_size):
        weights = _stratified_weights(errs, min(chunk_size, num_resamples - start), generator)
        for name, (values, _) in checked.items():
            boot[name].append(weighted_auroc(values, errs, weights))
    samples = {name: torch.cat(parts) for name, parts in boot.items()}  # each (num_resamples,)
    point = {name: auroc(values, errs) for name, (values, _) in checked.items()}
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    results = []
    for name in names:
        low, high = torch.quantile(samples[name], tails).tolist()
        diff_low, diff_high = torch.quantile(samples[name] - samples[reference], tails).tolist()
        results.append(
            ScoreDetection(
                name=name,
                auroc=float(point[name]),  # type: ignore[arg-type]
                ci_low=low,
                ci_high=high,
                difference=float(point[name] - point[reference]),  # type: ignore[operator]
                difference_ci_low=diff_low,
                difference_ci_high=diff_high,
            )
        )
    return ErrorDetectionReport(
        scores=tuple(results),
        reference=reference,
        num_errors=int(errs.sum()),
        num_samples=int(errs.numel()),
        num_resamples=num_resamples,
        level=level,
        seed=seed,
    )
