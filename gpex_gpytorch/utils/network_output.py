"""Pick the tensor to explain out of whatever a network returns (a tensor, a tuple, a dict, a model-output object).

Networks from other libraries rarely return one tensor: a HuggingFace classifier returns an
``ImageClassifierOutput`` (read ``.logits``), an attention module a tuple ``(output, weights)``.
An *output selector* says which part is the network's output:

* ``None``: the output must already be a tensor;
* a ``str``: a key of a mapping output, else an attribute (``"logits"``, ``"last_hidden_state"``);
* an ``int``: an index into a tuple or list output (``0`` for the first element);
* a callable: ``selector(output) -> Tensor``, for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Union

from torch import Tensor, nn

__all__ = ["OutputSelector", "SelectOutput", "check_output_selector", "replace_output", "select_output"]

OutputSelector = Union[str, int, Callable[[Any], Tensor], None]
"""Which part of a network's output to explain (see the module documentation)."""


def check_output_selector(name: str, selector: object) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``selector`` is ``None``, a str, an int or a callable."""
    if selector is None or isinstance(selector, str) or callable(selector):
        return
    if isinstance(selector, int) and not isinstance(selector, bool):
        return
    raise TypeError(
        f"{name}: expected None, an attribute or key name (e.g. 'logits'), a tuple index or a callable, "
        f"got {type(selector).__name__}"
    )


def _available(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"keys {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} elements ({', '.join(type(o).__name__ for o in output)})"
    if is_dataclass(output):
        return f"fields {[f.name for f in fields(output)]}"
    public = [a for a in vars(output) if not a.startswith("_")] if hasattr(output, "__dict__") else []
    return f"attributes {public}" if public else "no named parts"


def select_output(output: Any, selector: OutputSelector, where: str) -> Tensor:
    """The tensor ``selector`` picks out of ``output``.

    :param where: what produced ``output``, for error messages (e.g. ``"ann"``).
    :raises TypeError: the selected value is not a tensor (the message lists what the output holds).
    :raises ValueError: no such key, attribute or index.
    """
    if selector is None:
        value = output
    elif isinstance(selector, str):
        if isinstance(output, Mapping) and selector in output:
            value = output[selector]
        elif hasattr(output, selector) and not isinstance(output, Mapping):
            value = getattr(output, selector)
        else:
            raise ValueError(
                f"output: {where} returned a {type(output).__name__} with no key or attribute {selector!r} "
                f"(it has {_available(output)})"
            )
    elif isinstance(selector, int):
        if hasattr(output, "to_tuple") and not isinstance(output, (tuple, list)):
            output = output.to_tuple()  # model-output objects (HuggingFace) index like their tuple form
        if not isinstance(output, (tuple, list)) or not -len(output) <= selector < len(output):
            raise ValueError(
                f"output: index {selector} does not exist in the {type(output).__name__} that {where} returned "
                f"({_available(output) if isinstance(output, (tuple, list)) else 'not a tuple or list'})"
            )
        value = output[selector]
    else:
        value = selector(output)
    if not isinstance(value, Tensor):
        hint = (
            "pass output= a key or attribute name (e.g. 'logits'), a tuple index, or a callable returning the tensor"
            if selector is None
            else "the output selector must pick a tensor"
        )
        raise TypeError(
            f"output: expected {where} to return a tensor, got {type(value).__name__} (it has {_available(value)}); "
            f"{hint}"
        )
    return value


def replace_output(output: Any, selector: OutputSelector, value: Tensor, where: str) -> Any:
    """``output`` with the part ``selector`` picks replaced by ``value`` (the inverse of :func:`select_output`).

    A tuple or list gets a new container of the same type; a mapping (a HuggingFace model-output
    object included) a shallow copy with the key replaced; a dataclass or an object with the
    attribute a copy with the field replaced. ``output`` itself is not modified.

    :raises ValueError: the part does not exist (as in :func:`select_output`).
    :raises TypeError: a callable selector (it cannot be inverted): select with a key, an attribute
        name or an index instead.
    """
    select_output(output, selector, where)  # the same checks (and messages) as selecting
    if selector is None:
        return value
    if isinstance(selector, int):
        if isinstance(output, (tuple, list)):
            items = list(output)
            items[selector] = value
            return type(output)(items) if type(output) in (tuple, list) else type(output)(*items)
        raise TypeError(
            f"output: cannot replace element {selector} of the {type(output).__name__} that {where} returned; "
            "select a key or attribute name instead"
        )
    if isinstance(selector, str):
        if isinstance(output, Mapping):
            copy = output.copy() if hasattr(output, "copy") else dict(output)
            copy[selector] = value
            if hasattr(copy, "__dict__") and hasattr(output, selector):
                object.__setattr__(copy, selector, value)  # model-output objects mirror keys as attributes
            return copy
        if is_dataclass(output) and selector in {f.name for f in fields(output)}:
            import dataclasses

            return dataclasses.replace(output, **{selector: value})
        import copy as copying

        replaced = copying.copy(output)
        setattr(replaced, selector, value)
        return replaced
    raise TypeError(
        f"output: a callable selector cannot be inverted to put the GP's values back into what {where} returns; "
        "select the tensor with a key or attribute name (e.g. 'last_hidden_state') or a tuple index (e.g. 0)"
    )


class SelectOutput(nn.Module):
    """``module`` followed by :func:`select_output`: a network that returns the one tensor to explain.

    :param module: the network (or sub-module).
    :param selector: which part of its output to keep.
    """

    def __init__(self, module: nn.Module, selector: OutputSelector) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        check_output_selector("output", selector)
        super().__init__()
        self.module = module
        self.selector = selector

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return select_output(self.module(*args, **kwargs), self.selector, type(self.module).__name__)
