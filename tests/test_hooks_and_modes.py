"""The shared forward-hook context (utils.hooks), the train/eval save-restore (utils.modules.eval_mode),
the deprecated-alias helper and the torch.load failure message."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import Tensor, nn

from gpex_gpytorch.utils.deprecation import deprecated_alias
from gpex_gpytorch.utils.hooks import ForwardHooks, ModuleCall, capture_forward
from gpex_gpytorch.utils.modules import eval_mode, restored_modes
from gpex_gpytorch.utils.torch_load import load_failure_reason


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------------------ ForwardHooks
def test_output_replacement_reaches_downstream_and_is_gone_after() -> None:
    net, x = _net(), torch.randn(5, 3)
    with torch.no_grad():
        original = net(x)
        with ForwardHooks({"0": net[0]}, lambda call: call.output * 0.0 + 1.0):
            replaced = net(x)
        after = net(x)
    # the first layer's output is all ones: the rest of the network computed by hand
    expected = net[2](torch.relu(torch.ones(5, 4)))
    assert torch.equal(replaced, expected)
    assert not torch.equal(replaced, original)
    assert torch.equal(after, original) and _hook_count(net) == 0


def test_input_replacement_changes_the_first_argument_only() -> None:
    seen: list[tuple[Tensor, Tensor]] = []

    class Two(nn.Module):
        def forward(self, a: Tensor, b: Tensor, *, scale: float = 1.0) -> Tensor:
            seen.append((a, b))
            return (a + b) * scale

    module = Two()
    with ForwardHooks({"two": module}, lambda call: call.value * 10, site="input"):
        out = module(torch.ones(2), torch.full((2,), 3.0), scale=0.5)
    assert torch.equal(out, torch.full((2,), 6.5))  # (10 + 3) * 0.5: the keyword argument kept
    assert torch.equal(seen[0][1], torch.full((2,), 3.0))
    assert _hook_count(module) == 0


def test_hook_sees_names_args_kwargs_and_output_of_every_call() -> None:
    calls: list[ModuleCall] = []

    class Scaled(nn.Module):
        def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
            return x * scale

    parent = nn.ModuleDict({"a": Scaled(), "b": Scaled()})
    with ForwardHooks(dict(parent.named_children()), calls.append):
        parent["a"](torch.ones(1), scale=2.0)
        parent["b"](torch.ones(1))
        parent["a"](torch.ones(1))
    assert [c.name for c in calls] == ["a", "b", "a"]
    assert calls[0].kwargs == {"scale": 2.0} and calls[1].kwargs == {}
    assert [float(c.output) for c in calls] == [2.0, 1.0, 1.0]
    assert calls[0].module is parent["a"] and calls[0].value is calls[0].output


def test_hooks_removed_when_the_block_or_a_hook_raises() -> None:
    net, x = _net(), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="inside"):
        with ForwardHooks({"0": net[0], "2": net[2]}, lambda call: None):
            assert _hook_count(net) == 2
            raise RuntimeError("inside")
    assert _hook_count(net) == 0

    def broken(call: ModuleCall) -> None:
        raise ValueError(f"hook on {call.name}")

    with pytest.raises(ValueError, match="hook on 0"):
        with ForwardHooks({"0": net[0]}, broken):
            net(x)
    assert _hook_count(net) == 0


def test_a_failed_registration_removes_the_hooks_already_registered() -> None:
    class Refuses(nn.Linear):
        def register_forward_hook(self, *args: object, **kwargs: object) -> object:
            raise RuntimeError("no hooks here")

    first, second = nn.Linear(2, 2), Refuses(2, 2)
    with pytest.raises(RuntimeError, match="no hooks here"):
        with ForwardHooks({"first": first, "second": second}, lambda call: None):
            pass
    assert _hook_count(first) == 0


def test_reentering_an_active_hook_set_is_refused_and_remove_is_idempotent() -> None:
    net = _net()
    hooks = ForwardHooks({"0": net[0]}, lambda call: None)
    with hooks:
        with pytest.raises(RuntimeError, match="already active"):
            hooks.register()
        assert hooks.active and _hook_count(net) == 1
    hooks.remove()
    assert not hooks.active and _hook_count(net) == 0


def test_bad_arguments_name_themselves() -> None:
    net = _net()
    with pytest.raises(TypeError, match=r"modules: expected a mapping"):
        ForwardHooks([net[0]], lambda call: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"modules\['x'\]: expected an nn.Module, got int"):
        ForwardHooks({"x": 3}, lambda call: None)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"fn: expected a callable, got int"):
        ForwardHooks({"0": net[0]}, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"site: expected one of \('output', 'input'\), got 'middle'"):
        ForwardHooks({"0": net[0]}, lambda call: None, site="middle")  # type: ignore[arg-type]


def test_capture_forward_detach_and_clone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True))
    x = torch.randn(6, 3, requires_grad=True)
    with capture_forward({"0": net[0]}) as kept, capture_forward({"0": net[0]}, detach=True, clone=True) as copied:
        net(x)
    pre = x @ net[0].weight.T + net[0].bias
    # without clone the stored tensor is the one the in-place ReLU overwrote; with clone it is not
    torch.testing.assert_close(copied["0"], pre.detach())
    torch.testing.assert_close(kept["0"], pre.clamp_min(0))
    assert kept["0"].requires_grad and not copied["0"].requires_grad
    with capture_forward({"1": net[1]}, site="input") as inputs:
        net(x)
    assert inputs["1"].shape == (6, 4) and _hook_count(net) == 0


# ------------------------------------------------------------------------------ eval_mode / restored_modes
class _Tracked(nn.Module):
    """Records every ``train`` call, as a module that drops caches on a mode change would need."""

    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Dropout(0.5)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> _Tracked:
        self.calls.append(mode)
        return super().train(mode)


def _mixed() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2), nn.Dropout()), _Tracked())
    model.train()
    model[1].eval()  # a frozen block inside a training model
    model[1][1].train()  # ...with one module of its own in train mode
    return model


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_eval_mode_sets_eval_and_restores_mixed_flags_exactly() -> None:
    model = _mixed()
    model[2].calls.clear()
    before = _flags(model)
    assert before == [True, True, False, False, True, True, True]
    with eval_mode(model):
        assert _flags(model) == [False] * 7
    assert _flags(model) == before
    # the override saw both changes: eval on entry, train(True) on exit
    assert model[2].calls == [False, True]


def test_eval_mode_restores_on_exception_and_for_several_roots() -> None:
    a, b = _mixed(), nn.Dropout().eval()
    before_a, before_b = _flags(a), _flags(b)
    with pytest.raises(KeyError):
        with eval_mode(a, b, a[1]):  # a[1] lies inside a: covered by a's tree
            raise KeyError("x")
    assert _flags(a) == before_a and _flags(b) == before_b


def test_restored_modes_undoes_mode_changes_made_inside_the_block() -> None:
    shared = nn.Dropout()
    first, second = nn.Sequential(shared).train(), nn.Sequential(shared)
    second.training = False  # the shared child is in train mode; second's own flag differs
    before = (_flags(first), _flags(second))
    with restored_modes(first, second):
        first.eval()
        second.train()
    assert (_flags(first), _flags(second)) == before


def test_eval_mode_rejects_non_modules_before_changing_anything() -> None:
    model = nn.Dropout().train()
    with pytest.raises(TypeError, match=r"modules\[1\]: expected a torch.nn.Module, got str"):
        with eval_mode(model, "net"):  # type: ignore[arg-type]
            pass
    assert model.training


# ------------------------------------------------------------------------------ deprecation, torch.load
def test_deprecated_alias_warns_and_forwards() -> None:
    def new_name(x: int, *, y: int = 1) -> int:
        return 10 * x + y

    old = deprecated_alias(new_name, "old_name", reason="renamed")
    with pytest.warns(DeprecationWarning, match=r"old_name is deprecated; use .*new_name \(renamed\)"):
        assert old(3, y=4) == 34
    assert old.__name__ == "old_name" and old.__wrapped__ is new_name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="old_name: expected a Python identifier"):
        deprecated_alias(new_name, "old name")


def test_load_failure_reason_drops_the_advice_to_unpickle(tmp_path: object) -> None:
    path = f"{tmp_path}/evil.pt"
    with open(path, "wb") as handle:
        pickle.dump(warnings.WarningMessage, handle, protocol=2)  # a class: not allowed under weights_only
    with pytest.raises(Exception) as info:
        torch.load(path, weights_only=True)
    reason = load_failure_reason(info.value)
    assert "weights_only=False" not in reason and reason
    assert load_failure_reason(RuntimeError("bad zip. This is an internal error")) == "bad zip"
    assert load_failure_reason(EOFError()) == "EOFError"
    with pytest.raises(TypeError, match="error: expected an exception, got str"):
        load_failure_reason("boom")  # type: ignore[arg-type]
