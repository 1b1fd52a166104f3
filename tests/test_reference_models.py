"""Reference classifiers (digits CNN, CIFAR ResNet-18) and the helpers that train and evaluate them."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.models import DigitsCNN, accuracy, cifar_resnet18, fit_classifier, predict_logits
from gpex_gpytorch.models.cifar_resnet import BasicBlock

# ----------------------------------------------------------------------------- DigitsCNN


def test_digits_cnn_shapes_and_named_parts():
    torch.manual_seed(0)
    model = DigitsCNN()
    x = torch.rand(5, 1, 8, 8)
    logits = model(x)
    embedding = model.embed(x)
    assert logits.shape == (5, 10) and embedding.shape == (5, 1024)
    assert isinstance(model.features, nn.Sequential) and model.features(x).shape == (5, 64, 4, 4)
    assert model.penultimate(model.features(x)).shape == (5, 1024)
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 10
    assert embedding.min() >= 0 and (embedding > 0).any()  # post-ReLU activations
    torch.testing.assert_close(model.classifier(embedding), logits)


def test_digits_cnn_custom_sizes_and_bad_input():
    model = DigitsCNN(num_classes=3, width=16, in_channels=2)
    assert model(torch.rand(4, 2, 8, 8)).shape == (4, 3)
    assert model.embed(torch.rand(4, 2, 8, 8)).shape == (4, 16)
    with pytest.raises(ValueError, match=r"x: expected images of shape \(N, C, 8, 8\), got \(4, 2, 28, 28\)"):
        model(torch.rand(4, 2, 28, 28))
    with pytest.raises(ValueError, match="width"):
        DigitsCNN(width=0)


@pytest.mark.slow
def test_digits_cnn_trains_to_97_percent():
    train, test = load_digits(seed=0)
    torch.manual_seed(0)
    model = DigitsCNN()
    start = time.process_time()
    fit_classifier(model, train, epochs=10, batch_size=32, seed=0)
    seconds = time.process_time() - start
    test_accuracy = accuracy(model, test)
    assert not model.training  # returned ready for inference
    assert test_accuracy >= 0.97, f"test accuracy {test_accuracy:.4f} after {seconds:.1f} s of CPU"
    assert accuracy(model, train) >= 0.995


# ----------------------------------------------------------------------------- fit_classifier


def _tiny_problem(n: int = 96) -> tuple[TensorDataset, nn.Module]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y), nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def test_fit_classifier_is_deterministic_given_seed_and_leaves_global_rng_alone():
    dataset, model = _tiny_problem()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    fit_classifier(model, dataset, epochs=3, batch_size=16, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before)
    first = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(initial)
    fit_classifier(model, dataset, epochs=3, batch_size=16, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, model.parameters(), strict=True))

    model.load_state_dict(initial)
    fit_classifier(model, dataset, epochs=3, batch_size=16, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(first, model.parameters(), strict=True))


def test_fit_classifier_learns_a_linear_rule():
    dataset, model = _tiny_problem(256)
    torch.manual_seed(0)
    before = accuracy(model, dataset)
    fit_classifier(model, dataset, epochs=20, batch_size=32, lr=1e-2, seed=0)
    assert accuracy(model, dataset) >= 0.95 > before + 0.2


def test_fit_classifier_validates_inputs():
    dataset, model = _tiny_problem()
    with pytest.raises(ValueError, match="train_dataset: expected a non-empty dataset"):
        fit_classifier(model, TensorDataset(torch.empty(0, 6), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"train_dataset: expected items \(inputs, labels\)"):
        fit_classifier(model, TensorDataset(torch.randn(8, 6)))
    with pytest.raises(ValueError, match="epochs"):
        fit_classifier(model, dataset, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit_classifier(model, dataset, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        fit_classifier(model, dataset, lr=0.0)
    with pytest.raises(ValueError, match="model: expected logits of shape"):
        fit_classifier(nn.Sequential(nn.Linear(6, 2), nn.Flatten(0)), dataset, epochs=1)


# ----------------------------------------------------------------------------- accuracy / predict_logits


def _identity_with_dropout() -> nn.Module:
    # Dropout(0.9) in train mode would scramble the outputs: exact answers prove eval mode is used.
    linear = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
    return nn.Sequential(nn.Dropout(0.9), linear)


def _scored_dataset() -> TensorDataset:
    # arg-max of each row: 0, 1, 2, 2, 0, 1, 1, 2 ; labels agree on 6 of 8.
    x = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 0, 1], [1, 0, 5], [9, 1, 1], [0, 4, 0], [1, 3, 2], [0, 1, 2]])
    y = torch.tensor([0, 1, 2, 2, 1, 1, 0, 2])
    return TensorDataset(x, y)


@pytest.mark.parametrize("training", [True, False])
def test_accuracy_is_exact_and_restores_mode(training):
    model = _identity_with_dropout().train(training)
    assert accuracy(model, _scored_dataset(), batch_size=3) == pytest.approx(0.75)
    assert model.training is training and all(m.training is training for m in model.modules())


@pytest.mark.parametrize("training", [True, False])
def test_predict_logits_in_order_and_restores_mode(training):
    model = _identity_with_dropout().train(training)
    dataset = _scored_dataset()
    logits = predict_logits(model, dataset, batch_size=3)
    torch.testing.assert_close(logits, dataset.tensors[0])
    assert model.training is training
    unlabelled = TensorDataset(dataset.tensors[0])
    torch.testing.assert_close(predict_logits(model, unlabelled, batch_size=5), dataset.tensors[0])


def test_accuracy_validates_dataset():
    with pytest.raises(ValueError, match="dataset: expected a non-empty dataset"):
        accuracy(_identity_with_dropout(), TensorDataset(torch.empty(0, 3), torch.empty(0)))


# ----------------------------------------------------------------------------- CIFAR ResNet-18


def test_cifar_resnet18_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = cifar_resnet18().eval()
    # The standard CIFAR ResNet-18 (e.g. kuangliu/pytorch-cifar) has 11,173,962 parameters.
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem = model.features[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8

    stage_shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: stage_shapes.append(tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, BasicBlock)
    ]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        embedding = model.embed(x)
    for hook in hooks:
        hook.remove()
    assert logits.shape == (2, 10) and embedding.shape == (2, 512)
    # Stages at 32, 16, 8, 4 pixels: the stem keeps the full resolution.
    assert stage_shapes[1::2][:4] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]


def test_cifar_resnet18_wide_penultimate():
    model = cifar_resnet18(num_classes=7, width=2048).eval()
    expected = 11_173_962 - (512 * 10 + 10) + (512 * 2048 + 2048) + (2048 * 7 + 7)
    assert sum(p.numel() for p in model.parameters()) == expected
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        embedding = model.embed(x)
        logits = model(x)
    assert embedding.shape == (2, 2048) and embedding.min() >= 0
    assert logits.shape == (2, 7)
    torch.testing.assert_close(model.classifier(embedding), logits)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet18(width=0)
