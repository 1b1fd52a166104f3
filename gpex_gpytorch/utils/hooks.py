"""Forward hooks on named sub-modules: read or replace what they receive or return, then remove the hooks.

Every explainer that looks inside a network (capturing a sub-module's input and output, recording a
layer's activations, masking channels, swapping a sub-module's output for a GP's) does it the same
way, through :class:`ForwardHooks`:

* nothing about the network is replaced: no ``forward`` is patched, only
  :meth:`torch.nn.Module.register_forward_hook` / ``register_forward_pre_hook`` are used;
* the hooks exist only while the context is open and are removed in ``__exit__`` whatever
  happened (an exception in the block, in a hook, or while registering a later hook);
* a hook function sees one :class:`ModuleCall` per call of a hooked sub-module and may return a
  replacement: for ``site="output"`` the sub-module's output, for ``site="input"`` its first
  positional argument (the one a layer computes on).

Example::

    with ForwardHooks({"features.0": net.features[0]}, lambda call: call.output * 0.5):
        halved = net(x)          # features.0's output halved, downstream sees the halved tensor
    # the hook is gone here

    with capture_forward({"head": net.head}, detach=True) as seen:
        net(x)
    seen["head"]                 # the head's output on x
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookFn", "HookSite", "ForwardHooks", "ModuleCall", "capture_forward"]

HookSite = Literal["output", "input"]
SITES: tuple[str, ...] = ("output", "input")


@dataclass(frozen=True)
class ModuleCall:
    """One call of a hooked sub-module, as its hook sees it.

    :ivar name: the name the sub-module was hooked under.
    :ivar module: the sub-module.
    :ivar args: its positional arguments.
    :ivar kwargs: its keyword arguments.
    :ivar output: what it returned (``None`` for a hook at ``site="input"``, which runs before).
    :ivar site: ``"output"`` or ``"input"``.
    """

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    site: str = "output"

    @property
    def value(self) -> Any:
        """The hooked value: the output at ``site="output"``, the first positional argument (or
        ``None`` without one) at ``site="input"``."""
        if self.site == "output":
            return self.output
        return self.args[0] if self.args else None


HookFn = Callable[[ModuleCall], Any]
"""``fn(call) -> replacement or None``: ``None`` leaves the hooked value as it is."""


class ForwardHooks:
    """Context manager that hooks named sub-modules for the duration of a block.

    :param modules: ``{name: sub-module}`` (names are only passed back in :attr:`ModuleCall.name`;
        resolve them first, e.g. with :func:`~gpex_gpytorch.utils.resolve_submodule`).
    :param fn: called on every call of every hooked sub-module; a non-``None`` return replaces the
        sub-module's output (``site="output"``) or its first positional argument (``site="input"``).
    :param site: ``"output"`` (a forward hook, after the call) or ``"input"`` (a forward pre-hook).
    :raises TypeError: ``modules`` is not a mapping of modules, or ``fn`` is not callable.
    :raises ValueError: an unknown ``site``.
    """

    def __init__(self, modules: Mapping[str, nn.Module], fn: HookFn, *, site: HookSite = "output") -> None:
        if not isinstance(modules, Mapping):
            raise TypeError(f"modules: expected a mapping from name to nn.Module, got {type(modules).__name__}")
        for name, module in modules.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"modules[{name!r}]: expected an nn.Module, got {type(module).__name__}")
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        if site not in SITES:
            raise ValueError(f"site: expected one of {SITES}, got {site!r}")
        self.modules = dict(modules)
        self.fn = fn
        self.site = site
        self._handles: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        """Whether the hooks are registered (between :meth:`register` and :meth:`remove`)."""
        return bool(self._handles)

    def _output_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            return self.fn(ModuleCall(name, module, args, kwargs, output, "output"))

        return hook

    def _input_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            replacement = self.fn(ModuleCall(name, module, args, kwargs, None, "input"))
            if replacement is None:
                return None
            # A pre-hook registered with kwargs returns (args, kwargs); only the first argument changes.
            return (replacement, *args[1:]), kwargs

        return hook

    def register(self) -> ForwardHooks:
        """Register the hooks (``__enter__`` does this; for owners that manage the lifetime
        themselves, paired with :meth:`remove`). Returns ``self``.

        :raises RuntimeError: the hooks are already registered.
        """
        if self._handles:
            raise RuntimeError("ForwardHooks: already active; leave the block before entering it again")
        try:
            for name, module in self.modules.items():
                if self.site == "output":
                    handle = module.register_forward_hook(self._output_hook(name), with_kwargs=True)
                else:
                    handle = module.register_forward_pre_hook(self._input_hook(name), with_kwargs=True)
                self._handles.append(handle)
        except BaseException:
            self.remove()
            raise
        return self

    def __enter__(self) -> ForwardHooks:
        return self.register()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook registered by this object (idempotent)."""
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def capture_forward(
    modules: Mapping[str, nn.Module],
    *,
    site: HookSite = "output",
    detach: bool = False,
    clone: bool = False,
) -> Iterator[dict[str, Any]]:
    """Record the hooked value of each named sub-module during forward passes in the block.

    The yielded dict ``{name: value}`` is filled, and overwritten, by every call; the forward pass
    is not changed.

    :param site: ``"output"`` records outputs, ``"input"`` the first positional argument.
    :param detach: store tensors detached from the graph.
    :param clone: store copies of tensors (an in-place operation later in the forward pass, e.g.
        ``nn.ReLU(inplace=True)``, would otherwise change what was recorded).
    """
    store: dict[str, Any] = {}

    def record(call: ModuleCall) -> None:
        value = call.value
        if isinstance(value, Tensor):
            if detach:
                value = value.detach()
            if clone:
                value = value.clone()
        store[call.name] = value

    with ForwardHooks(modules, record, site=site):
        yield store
