"""PCA of activations that arrive in batches: incremental mean / covariance in float64, then ``eigh``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_count

__all__ = ["PCAResult", "StreamingPCA", "pca_lowrank", "symmetric_eigh"]


@dataclass(frozen=True)
class PCAResult:
    """Principal components of a set of ``F``-dimensional activation vectors.

    All tensors are float64 and live on the device the activations were accumulated on.

    :ivar mean: ``(F,)`` the mean activation :math:`\\mu`.
    :ivar components: ``(K, F)`` orthonormal rows, the principal directions by decreasing variance.
        The sign of each row is fixed so that its largest-magnitude entry is positive.
    :ivar eigenvalues: ``(K,)`` the variance of the activations along each component.
    :ivar neuron_variance: ``(F,)`` the variance of each coordinate ("neuron").
    :ivar total_variance: the sum of the neuron variances (the trace of the covariance).
    :ivar num_samples: how many activation vectors were seen.
    """

    mean: Tensor
    components: Tensor
    eigenvalues: Tensor
    neuron_variance: Tensor
    total_variance: float
    num_samples: int

    @property
    def num_features(self) -> int:
        """``F``, the dimension of the activation space."""
        return int(self.mean.shape[0])

    @property
    def num_components(self) -> int:
        """``K``, the number of components kept (``F`` for the full covariance path)."""
        return int(self.components.shape[0])

    @property
    def explained_variance_ratio(self) -> Tensor:
        """``(K,)`` the share of the total variance along each component."""
        return self.eigenvalues / _positive(self.total_variance)

    @property
    def cumulative_explained_variance(self) -> Tensor:
        """``(K,)`` the share of the total variance in the top-``k`` components, ``k = 1..K``."""
        return torch.cumsum(self.explained_variance_ratio, 0)

    @property
    def neuron_order(self) -> Tensor:
        """``(F,)`` neuron indices by decreasing variance (ties keep index order)."""
        return torch.sort(self.neuron_variance, descending=True, stable=True).indices

    @property
    def neuron_cumulative_explained_variance(self) -> Tensor:
        """``(F,)`` the share of the total variance in the ``k`` highest-variance neurons, ``k = 1..F``."""
        ordered = self.neuron_variance[self.neuron_order]
        return torch.cumsum(ordered, 0) / _positive(self.total_variance)

    def project(self, activations: Tensor, num_components: int | None = None) -> Tensor:
        """Scores of ``activations`` (``(N, F)``) on the top components: ``(N, k)``, float64."""
        k = self.num_components if num_components is None else num_components
        check_count("num_components", k, low=1, high=self.num_components)
        centred = activations.to(device=self.mean.device, dtype=torch.float64) - self.mean
        return centred @ self.components[:k].T

    def to(self, device: torch.device | str) -> PCAResult:
        """A copy with every tensor moved to ``device``."""
        return PCAResult(
            mean=self.mean.to(device),
            components=self.components.to(device),
            eigenvalues=self.eigenvalues.to(device),
            neuron_variance=self.neuron_variance.to(device),
            total_variance=self.total_variance,
            num_samples=self.num_samples,
        )


def _positive(value: float) -> float:
    # A constant layer has zero variance; report zero shares rather than NaN.
    return value if value > 0 else 1.0


def symmetric_eigh(matrix: Tensor, threads: int | None = 1) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` with the CPU thread count set to ``threads`` for the call.

    The threaded LAPACK eigensolver slows down by one to two orders of magnitude when the CPU is
    oversubscribed (measured: 0.5 s single-threaded versus 4–20 s with two threads for a
    1024 × 1024 float64 matrix on a busy 2-core machine), while a single thread is fast at the
    sizes met here. ``threads=None`` leaves torch's setting alone; GPU tensors are unaffected.
    The previous thread count is restored afterwards.
    """
    if not isinstance(matrix, Tensor) or matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"matrix: expected a square (F, F) tensor, got {got}")
    if threads is None or matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    check_count("threads", threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(previous)


def _fix_signs(components: Tensor) -> Tensor:
    """Flip each row so that its largest-magnitude entry is positive (a deterministic convention)."""
    if components.numel() == 0:
        return components
    pivot = components.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(components.gather(1, pivot))
    signs[signs == 0] = 1.0
    return components * signs


class StreamingPCA:
    """Accumulate the mean and covariance of activation batches, then diagonalise.

    Batches are merged with the pairwise update of Chan, Golub and LeVeque: each batch is centred
    on its own mean before its scatter matrix is added, so the accumulated statistics do not
    suffer the cancellation of the textbook :math:`\\sum x x^\\top - n \\mu \\mu^\\top`. Everything is
    accumulated in ``dtype`` (float64 by default) on the device of the first batch (or
    ``device``). Memory is :math:`O(F^2)` whatever the number of samples.

    Example::

        pca = StreamingPCA()
        for batch in batches:          # each (n, F)
            pca.update(batch)
        result = pca.result()          # PCAResult, components by decreasing variance

    :param num_features: ``F``, checked against every batch (inferred from the first batch if ``None``).
    :param device: where to accumulate (default: the first batch's device).
    :param dtype: accumulation dtype; keep float64 unless memory forbids.
    :param eigh_threads: CPU threads for the final eigendecomposition (see :func:`symmetric_eigh`;
        ``None``: torch's current setting).
    """

    def __init__(
        self,
        num_features: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        eigh_threads: int | None = 1,
    ) -> None:
        if num_features is not None:
            check_count("num_features", num_features)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
        self._num_features = num_features
        self._device = None if device is None else torch.device(device)
        self._dtype = dtype
        self._eigh_threads = None if eigh_threads is None else check_count("eigh_threads", eigh_threads)
        self._count = 0
        self._mean: Tensor | None = None
        self._scatter: Tensor | None = None  # shape: (F, F), sum of centred outer products

    @property
    def num_samples(self) -> int:
        """How many activation vectors have been accumulated."""
        return self._count

    @property
    def num_features(self) -> int | None:
        """``F`` (``None`` until the first batch when not given)."""
        return self._num_features

    def update(self, batch: Tensor) -> StreamingPCA:
        """Add a batch of activation vectors, ``(n, F)``. Returns ``self``.

        :raises ValueError: if ``batch`` is not 2-D, has the wrong width, or holds NaN / inf.
        """
        if not isinstance(batch, Tensor):
            raise TypeError(f"batch: expected a torch.Tensor, got {type(batch).__name__}")
        if batch.dim() != 2:
            raise ValueError(f"batch: expected a 2-D tensor (samples, features), got shape {tuple(batch.shape)}")
        if self._num_features is None:
            check_count("batch.shape[1]", int(batch.shape[1]))
            self._num_features = int(batch.shape[1])
        elif batch.shape[1] != self._num_features:
            raise ValueError(f"batch: expected {self._num_features} features per row, got shape {tuple(batch.shape)}")
        n = int(batch.shape[0])
        if n == 0:
            return self
        if self._device is None:
            self._device = batch.device
        x = batch.detach().to(device=self._device, dtype=self._dtype)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("batch: expected finite activations, found NaN or inf")
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_scatter = centred.T @ centred
        if self._mean is None or self._scatter is None:
            self._mean, self._scatter, self._count = batch_mean, batch_scatter, n
            return self
        total = self._count + n
        delta = batch_mean - self._mean
        self._scatter = self._scatter + batch_scatter + torch.outer(delta, delta) * (self._count * n / total)
        self._mean = self._mean + delta * (n / total)
        self._count = total
        return self

    def merge(self, other: StreamingPCA) -> StreamingPCA:
        """Fold another accumulator's statistics into this one (e.g. from another worker). Returns ``self``."""
        if not isinstance(other, StreamingPCA):
            raise TypeError(f"other: expected a StreamingPCA, got {type(other).__name__}")
        if other._count == 0 or other._mean is None or other._scatter is None:
            return self
        if self._num_features is not None and other._num_features != self._num_features:
            raise ValueError(f"other: expected {self._num_features} features, got {other._num_features}")
        if self._mean is None or self._scatter is None:
            self._num_features = other._num_features
            self._device = other._device if self._device is None else self._device
            self._mean = other._mean.to(self._device, self._dtype).clone()
            self._scatter = other._scatter.to(self._device, self._dtype).clone()
            self._count = other._count
            return self
        n_a, n_b = self._count, other._count
        total = n_a + n_b
        other_mean = other._mean.to(self._device, self._dtype)
        delta = other_mean - self._mean
        self._scatter = (
            self._scatter
            + other._scatter.to(self._device, self._dtype)
            + torch.outer(delta, delta) * (n_a * n_b / total)
        )
        self._mean = self._mean + delta * (n_b / total)
        self._count = total
        return self

    def mean(self) -> Tensor:
        """``(F,)`` the running mean."""
        self._require(1)
        assert self._mean is not None
        return self._mean

    def covariance(self) -> Tensor:
        """``(F, F)`` the unbiased (``n - 1``) sample covariance."""
        self._require(2)
        assert self._scatter is not None
        return self._scatter / (self._count - 1)

    def result(self, num_components: int | None = None) -> PCAResult:
        """Diagonalise the covariance (``torch.linalg.eigh`` in the accumulation dtype).

        :param num_components: keep the top ``k`` components (default: all ``F``).
        :raises ValueError: with fewer than two samples, or ``num_components`` outside ``[1, min(N, F)]``
            (as scikit-learn's ``PCA``: ``N`` samples span at most ``N - 1`` directions of non-zero
            variance, so asking for more components than samples is asking for arbitrary directions).
        """
        cov = self.covariance()
        f = cov.shape[0]
        if num_components is not None and not isinstance(num_components, bool) and isinstance(num_components, int):
            if num_components > self._count and num_components <= f:
                raise ValueError(
                    f"num_components: expected at most the {self._count} samples seen (min(samples, features) = "
                    f"{min(self._count, f)}), got {num_components}"
                )
        k = f if num_components is None else check_count("num_components", num_components, low=1, high=f)
        cov = 0.5 * (cov + cov.T)
        eigenvalues, vectors = symmetric_eigh(cov, self._eigh_threads)
        eigenvalues = eigenvalues.flip(0)[:k].clamp_min(0.0)
        components = _fix_signs(vectors.flip(1)[:, :k].T.contiguous())
        neuron_variance = torch.diagonal(cov).clamp_min(0.0).clone()
        return PCAResult(
            mean=self.mean().clone(),
            components=components,
            eigenvalues=eigenvalues,
            neuron_variance=neuron_variance,
            total_variance=float(neuron_variance.sum()),
            num_samples=self._count,
        )

    def _require(self, minimum: int) -> None:
        if self._count < minimum:
            raise ValueError(
                f"dataset: expected at least {minimum} activation vector(s) before computing the PCA, got {self._count}"
            )


def pca_lowrank(
    activations: Tensor,
    num_components: int,
    *,
    niter: int = 4,
    oversample: int = 10,
    seed: int = 0,
) -> PCAResult:
    """Top components by randomized SVD (``torch.pca_lowrank``) of activations held in memory.

    Useful when ``F`` is too large for an ``F × F`` covariance. The eigenvalues of the kept
    components are approximate; the mean, the neuron variances and the total variance are exact,
    so explained-variance ratios stay on the right scale. The random sketch is drawn from a forked
    generator seeded with ``seed``: the global RNG is left untouched.

    :param activations: ``(N, F)``.
    :param num_components: ``k``, the number of components to keep (``1 <= k <= min(N, F)``).
    :param niter: subspace iterations (more: closer to the exact SVD).
    :param oversample: extra sketch columns beyond ``k``.
    """
    if not isinstance(activations, Tensor) or activations.dim() != 2:
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"activations: expected a 2-D tensor (samples, features), got {shape}")
    n, f = activations.shape
    if n < 2:
        raise ValueError(f"activations: expected at least 2 rows, got {n}")
    k = check_count("num_components", num_components, low=1, high=min(n, f))
    check_count("niter", niter, low=0)
    check_count("oversample", oversample, low=0)
    x = activations.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("activations: expected finite values, found NaN or inf")
    mean = x.mean(0)
    neuron_variance = x.var(0, unbiased=True)
    q = min(k + oversample, n, f)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        _, s, v = torch.pca_lowrank(x, q=q, center=True, niter=niter)
    return PCAResult(
        mean=mean,
        components=_fix_signs(v[:, :k].T.contiguous()),
        eigenvalues=(s[:k] ** 2) / (n - 1),
        neuron_variance=neuron_variance,
        total_variance=float(neuron_variance.sum()),
        num_samples=int(n),
    )
