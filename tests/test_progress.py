"""Progress bars: on a terminal only by default; forced bars in a log redraw rarely."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from gpex_gpytorch.distillation import Distiller
from gpex_gpytorch.utils import progress as progress_module
from gpex_gpytorch.utils.progress import progress_bar, resolve_progress


class _Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def test_auto_follows_the_terminal(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", _Stream(True))
    assert resolve_progress("auto") is True
    monkeypatch.setattr("sys.stderr", _Stream(False))
    assert resolve_progress("auto") is False
    assert resolve_progress(True) is True and resolve_progress(False) is False
    with pytest.raises(ValueError, match="progress: expected True, False or 'auto', got 'yes'"):
        resolve_progress("yes")
    with pytest.raises(ValueError, match="progress: expected True, False or 'auto'"):
        Distiller(nn.Linear(2, 2), progress="yes")


def test_a_distillation_piped_to_a_file_writes_nothing_by_default(monkeypatch) -> None:
    log = _Stream(False)
    monkeypatch.setattr("sys.stderr", log)
    x = torch.randn(64, 3)
    Distiller(nn.Linear(3, 2), embedding_dim=2, steps=30, batch_size=8, inducing_batch_size=8, eval_every=1).fit(x)
    assert log.getvalue() == ""


def test_forced_bars_off_a_terminal_redraw_at_most_every_interval(monkeypatch) -> None:
    log = _Stream(False)
    monkeypatch.setattr("sys.stderr", log)
    bar = progress_bar(total=500, desc="steps", progress=True, file=log)
    assert bar.mininterval == progress_module.LOG_INTERVAL_S
    for step in range(500):
        bar.set_postfix(step=step, refresh=False)
        bar.update(1)
    bar.close()
    # The first frame and the final one, not one per step.
    assert 1 <= log.getvalue().count("steps") <= 3
