"""GPyTorch's own test mixins on the package's kernel and model, and the kernel's GPyTorch surface.

``BaseKernelTestCase`` runs on :class:`CachedDeepKernel` and ``VariationalModelTestCase`` on
:class:`GPEXModel`; ``VariationalTestCase`` runs on ``ANNMatchingELBO`` in tests/test_ann_matching_elbo.py
(it builds stock strategies, so it does not apply to ``GPEXVariationalStrategy``). Every upstream test
that does not apply is skipped with the reason, or overridden to check the clear error that replaces it.
"""

from __future__ import annotations

import unittest

import gpytorch
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from gpytorch.test.model_test_case import VariationalModelTestCase
from torch import nn

from gpex_gpytorch import CachedDeepKernel, GPEXModel

DATA_BATCH = (
    "data batches (a batch shape in front of the N inputs) are unsupported by design: the inputs are whatever "
    "feature_extractor takes, images included; the clear error is checked in test_a_data_batch_is_refused_by_name"
)
D = 4


def _kernel(
    in_features: int, num_heads: int, num_inducing: int = 8, seed: int = 0, **kwargs: object
) -> CachedDeepKernel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(in_features, 16), nn.Tanh(), nn.Linear(16, num_heads * D))
    return CachedDeepKernel(net, num_inducing, num_heads, D, **kwargs)


class TestCachedDeepKernelAsAGPyTorchKernel(BaseKernelTestCase, unittest.TestCase):
    """The heads are the kernel's batch dimension: ``batch_shape=(H,)`` maps to ``num_heads=H``."""

    def create_kernel_no_ard(self, **kwargs: object) -> CachedDeepKernel:
        batch_shape = kwargs.pop("batch_shape", torch.Size([]))
        if len(batch_shape) > 1:
            raise unittest.SkipTest("the heads are the only batch dimension: 2-D batch shapes do not apply")
        return _kernel(10, max(1, batch_shape.numel()), **kwargs)

    def test_active_dims_list(self) -> None:  # overridden: rejected at construction, by name
        with self.assertRaisesRegex(ValueError, "active_dims"):
            self.create_kernel_no_ard(active_dims=[0, 2, 4, 6])

    def test_active_dims_range(self) -> None:  # overridden: rejected at construction, by name
        with self.assertRaisesRegex(ValueError, "active_dims"):
            self.create_kernel_no_ard(active_dims=list(range(3, 9)))

    def test_kernel_getitem_single_batch(self) -> None:  # overridden: refused with the way to a head's kernel
        kernel = self.create_kernel_no_ard(batch_shape=torch.Size([2]))
        with self.assertRaisesRegex(NotImplementedError, r"kernel\(x1, x2\)\[h\]"):
            kernel[0]

    @unittest.skip(DATA_BATCH)
    def test_no_batch_kernel_single_batch_x_no_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip(DATA_BATCH)
    def test_single_batch_kernel_single_batch_x_no_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip(DATA_BATCH)
    def test_no_batch_kernel_double_batch_x_no_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip(DATA_BATCH + "; and the kernel has no ARD lengthscale")
    def test_no_batch_kernel_double_batch_x_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip("a (3, 2) kernel batch shape: the heads are the only batch dimension; " + DATA_BATCH)
    def test_smoke_double_batch_kernel_double_batch_x_no_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip("a (3, 2) kernel batch shape: the heads are the only batch dimension; " + DATA_BATCH)
    def test_smoke_double_batch_kernel_double_batch_x_ard(self) -> None:  # pragma: no cover
        pass

    @unittest.skip("kernel[i, j] needs a (3, 2) batch shape; kernel[i] is refused (test_kernel_getitem_single_batch)")
    def test_kernel_getitem_double_batch(self) -> None:  # pragma: no cover
        pass

    @unittest.skip("kernel[idx1, idx2] on an expanded batch: expand_batch and kernel[...] do not apply (shared cache)")
    def test_kernel_getitem_broadcast(self) -> None:  # pragma: no cover
        pass


class TestGPEXModelAsAGPyTorchVariationalModel(VariationalModelTestCase, unittest.TestCase):
    """One head (``H = 1``): the (N, 1) multitask output then has the (N, N) covariance the mixin expects."""

    def create_model(self, train_x: torch.Tensor, train_y: torch.Tensor, likelihood: object) -> GPEXModel:
        kernel = _kernel(train_x.shape[-1], 1, num_inducing=train_x.shape[-2])
        kernel.fill(train_x, progress=False)
        return GPEXModel(kernel, train_y.reshape(-1, 1), noise=0.5, learn_noise=True)

    def create_test_data(self) -> torch.Tensor:
        return torch.randn(20, 3, generator=torch.Generator().manual_seed(0))

    def create_likelihood_and_labels(self) -> tuple[gpytorch.likelihoods.Likelihood, torch.Tensor]:
        # GPEXModel returns a multitask output, (N, H), so the likelihood is the multitask Gaussian.
        labels = torch.sin(self.create_test_data().sum(-1, keepdim=True))
        return gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=1), labels

    def create_batch_test_data(self, batch_shape: torch.Size | None = None) -> torch.Tensor:
        raise unittest.SkipTest(DATA_BATCH)

    def create_batch_likelihood_and_labels(self, batch_shape: torch.Size | None = None) -> tuple:
        raise unittest.SkipTest(DATA_BATCH)


def test_a_data_batch_is_refused_by_name() -> None:
    kernel = _kernel(5, 3)
    kernel.fill(torch.randn(8, 5), progress=False)
    model = GPEXModel(kernel, torch.randn(8, 3))
    batch = torch.randn(2, 6, 5)  # a batch of two data sets of six inputs
    with pytest.raises(ValueError, match=r"^x: .*\(2, 6, 5\).*data batch"):
        kernel(batch)
    with pytest.raises(ValueError, match=r"^x: .*data batch"):
        model(batch)


def test_active_dims_and_batch_shape_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="active_dims"):
        _kernel(5, 2, active_dims=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"batch_shape: .*\(2,\)"):
        _kernel(5, 2, batch_shape=torch.Size([3]))


def test_getitem_is_refused_and_names_the_head_alternatives() -> None:
    kernel = _kernel(5, 3)
    kernel.fill(torch.randn(8, 5), progress=False)
    with pytest.raises(NotImplementedError, match=r"kernel\(x1, x2\)\[h\].*kernel.embed\(x\)\[h\]"):
        kernel[1]
    # The alternatives it names give head 1's kernel, f_1(x)ᵀ f_1(x'), checked densely.
    x1, x2 = torch.randn(4, 5), torch.randn(6, 5)
    with torch.no_grad():
        f1, f2 = kernel.embed(x1)[1], kernel.embed(x2)[1]
        torch.testing.assert_close(kernel(x1, x2)[1].to_dense(), f1 @ f2.T)


@pytest.mark.parametrize("wrap", ["scale", "scale_per_head", "sum", "product"])
def test_compositions_on_vector_inputs_equal_the_hand_computed_kernel(wrap: str) -> None:
    kernel = _kernel(5, 3)
    x1, x2 = torch.randn(7, 5), torch.randn(4, 5)
    with torch.no_grad():
        f1, f2 = kernel.embed(x1), kernel.embed(x2)
        base = f1 @ f2.mT  # shape: (3, 7, 4)
        if wrap == "scale":
            composed = gpytorch.kernels.ScaleKernel(kernel)
            composed.outputscale = 2.5
            expected = 2.5 * base
        elif wrap == "scale_per_head":
            composed = gpytorch.kernels.ScaleKernel(kernel, batch_shape=torch.Size([3]))
            composed.outputscale = torch.tensor([0.5, 1.0, 3.0])
            expected = torch.tensor([0.5, 1.0, 3.0]).view(3, 1, 1) * base
        elif wrap == "sum":
            composed, expected = kernel + kernel, 2 * base
        else:
            composed, expected = kernel * kernel, base * base
        torch.testing.assert_close(composed(x1, x2).to_dense(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            composed(x1, diag=True), expected.new_tensor(0) + _diag(wrap, composed, f1), rtol=1e-5, atol=1e-5
        )


def _diag(wrap: str, composed: gpytorch.kernels.Kernel, f1: torch.Tensor) -> torch.Tensor:
    d = (f1 * f1).sum(-1)  # shape: (3, 7)
    if wrap.startswith("scale"):
        return composed.outputscale.reshape(-1, 1) * d
    return 2 * d if wrap == "sum" else d * d


@pytest.mark.parametrize("wrap", ["scale", "sum", "product"])
def test_compositions_on_image_inputs_fail_with_the_remedy(wrap: str) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2 * D))
    kernel = CachedDeepKernel(net, 8, 2, D)
    images = torch.randn(5, 1, 8, 8)
    composed = {
        "scale": lambda: gpytorch.kernels.ScaleKernel(kernel),
        "sum": lambda: kernel + kernel,
        "product": lambda: kernel * kernel,
    }[wrap]()
    with pytest.raises(ValueError, match=r"x1: .*\(5, 1, 8, 8\).*nn\.Unflatten\(1, \(1, 8, 8\)\)"):
        composed(images).to_dense()
    # The remedy it names works: flattened inputs, un-flattened inside the kernel network.
    flat_kernel = CachedDeepKernel(nn.Sequential(nn.Unflatten(1, (1, 8, 8)), net), 8, 2, D)
    direct = kernel(images).to_dense()
    with torch.no_grad():
        value = gpytorch.kernels.ScaleKernel(flat_kernel)(images.flatten(1)).to_dense()
    torch.testing.assert_close(value, torch.nn.functional.softplus(torch.tensor(0.0)) * direct.detach())


def test_variational_params_initialized_is_a_tensor_buffer_like_gpytorchs() -> None:
    kernel = _kernel(5, 2)
    kernel.fill(torch.randn(8, 5), progress=False)
    model = GPEXModel(kernel, torch.randn(8, 2))
    flag = model.variational_strategy.variational_params_initialized
    stock = gpytorch.variational.VariationalStrategy(
        model, torch.zeros(3, 1), gpytorch.variational.CholeskyVariationalDistribution(3)
    ).variational_params_initialized
    assert isinstance(flag, torch.Tensor) and flag.dim() == 0 and isinstance(stock, torch.Tensor) and stock.dim() == 0
    assert flag.item() and not stock.item()
    # It is the kernel's buffer: it travels with state_dict and cannot disagree with the kernel.
    fresh = _kernel(5, 2)
    assert not fresh.values_set.item()
    fresh.load_state_dict(kernel.state_dict())
    assert fresh.values_set.item()
    assert flag.data_ptr() == kernel.values_set.data_ptr()
