"""A distillation killed with SIGKILL resumes from its last checkpoint and loses at most one interval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import TensorDataset
    from gpex_gpytorch import Distiller

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.tensor(load_digits().data[:400], dtype=torch.float32) / 16
    ann = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 3)).eval()
    steps, path = int(sys.argv[1]), sys.argv[2]
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    distiller = Distiller(ann, embedding_dim=4, steps=steps, batch_size=16, inducing_batch_size=16,
                          eval_every=1000, checkpoint_every=5, checkpoint_path=path, progress=False)
    distiller.fit(TensorDataset(x), resume=resume)
    mean, _ = distiller.model_.predict(x[:20])
    torch.save(mean, path + ".mean")
    """
)


def _run(tmp_path: Path, *args: str, wait: bool = True) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    return proc


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from gpex_gpytorch.distillation import load_checkpoint

    killed = tmp_path / "killed.pt"
    proc = _run(tmp_path, "100000", str(killed), wait=False)
    deadline = time.time() + 240
    while time.time() < deadline:
        if killed.exists() and load_checkpoint(killed)["step"] >= 10:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    step = load_checkpoint(killed)["step"]  # the last complete checkpoint is readable
    assert step >= 10 and step % 5 == 0
    total = step + 5
    _run(tmp_path, str(total), str(killed), str(killed))
    straight = tmp_path / "straight.pt"
    _run(tmp_path, str(total), str(straight))
    resumed_mean = torch.load(str(killed) + ".mean", weights_only=True)
    straight_mean = torch.load(str(straight) + ".mean", weights_only=True)
    torch.testing.assert_close(resumed_mean, straight_mean, rtol=0, atol=0)
    # A kill mid-write may leave a temporary; the resumed run's next save sweeps it away.
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
