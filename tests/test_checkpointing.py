"""Checkpoints survive concurrent writers, bit rot, a full disk and a read-only folder, with plain messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gpex_gpytorch.distillation import load_checkpoint, save_checkpoint
from gpex_gpytorch.utils.checkpoint_files import _host

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter that imports this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# root ignores file permissions; without these capabilities it obeys them like any user.
WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid names no process (until the system reuses it)
    return child.pid


WRITER = """
    import sys, time, torch
    from pathlib import Path
    from gpex_gpytorch.distillation import save_checkpoint
    torch.set_num_threads(1)
    path, value = Path(sys.argv[1]), int(sys.argv[2])
    (path.parent / f"ready-{value}").touch()
    while not (path.parent / "go").exists():  # both writers start saving together
        time.sleep(0.01)
    for step in range(40):
        state = {"format": "x", "writer": value, "step": step, "data": torch.full((50_000,), float(value))}
        save_checkpoint(path, state)
    print("done")
"""


def test_two_processes_writing_the_same_path_both_finish_and_the_file_loads(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "c.pt"
    writers = [_python(WRITER, str(path), str(value)) for value in (1, 2)]
    deadline = time.monotonic() + 120
    while not all((folder / f"ready-{value}").exists() for value in (1, 2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / "go").touch()
    for writer in writers:
        assert _finish(writer).strip() == "done"
    state = load_checkpoint(path)  # digest verified: one writer's state, whole
    assert state["step"] == 39 and state["writer"] in (1, 2)
    assert torch.equal(state["data"], torch.full((50_000,), float(state["writer"])))
    assert sorted(p.name for p in folder.iterdir()) == ["c.pt", "go", "ready-1", "ready-2"]  # no temporaries


def test_the_sweep_removes_only_temporaries_of_dead_writers_of_exactly_this_name(tmp_path: Path) -> None:
    host, dead, alive = _host(), _dead_pid(), os.getpid()
    stale = tmp_path / f".c.pt.{host}.{dead}.0a1b.tmp"  # this name, writer gone: removed
    live = tmp_path / f".c.pt.{host}.{alive}.2c3d.tmp"  # this name, writer running: kept
    other_name = tmp_path / f".c.pt.best.{host}.{dead}.4e5f.tmp"  # c.pt.best's, not c.pt's: kept
    other_host = tmp_path / f".c.pt.elsewhere.{dead}.6a7b.tmp"  # cannot be checked from here: kept
    for temporary in (stale, live, other_name, other_host):
        temporary.write_bytes(b"partial")
    save_checkpoint(tmp_path / "c.pt", {"format": "x", "value": torch.arange(3)})
    assert not stale.exists()
    assert live.exists() and other_name.exists() and other_host.exists()
    save_checkpoint(tmp_path / "c.pt.best", {"format": "x", "value": torch.arange(3)})
    assert not other_name.exists() and live.exists()


def test_a_flipped_byte_inside_a_tensor_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    values = torch.arange(1000, dtype=torch.float32)
    save_checkpoint(path, {"format": "x", "values": values})
    data = bytearray(path.read_bytes())
    at = data.find(values.numpy().tobytes())
    assert at > 0
    data[at + 2001] ^= 0x10  # one bit of one float: torch loads it without complaint
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["values"], values)
    with pytest.raises(ValueError, match=r"checkpoint: .*c.pt is corrupted: its contents do not match the SHA-256"):
        load_checkpoint(path)


def test_the_digest_key_is_reserved_and_not_returned(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="state: the key 'sha256' is reserved"):
        save_checkpoint(tmp_path / "c.pt", {"format": "x", "sha256": "abc"})
    save_checkpoint(tmp_path / "c.pt", {"format": "x", "nested": {"a": [1, 2.5, None, "s"]}})
    assert load_checkpoint(tmp_path / "c.pt") == {"format": "x", "nested": {"a": [1, 2.5, None, "s"]}}


DISK_FULL = """
    import resource, signal, sys, torch
    from gpex_gpytorch.distillation import load_checkpoint, save_checkpoint
    path = sys.argv[1]
    save_checkpoint(path, {"format": "x", "step": 1, "data": torch.zeros(100)})
    # The file system refuses to grow a file past 64 KB, as a full disk refuses any growth.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
    try:
        save_checkpoint(path, {"format": "x", "step": 2, "data": torch.zeros(100_000)})
    except OSError as error:
        print(type(error).__name__, error)
    print("step", load_checkpoint(path)["step"])
"""


def test_a_write_refused_by_the_file_system_gives_a_plain_message_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    out = _finish(_python(DISK_FULL, str(tmp_path / "c.pt")))
    assert "enforce fail" not in out
    assert f"OSError [Errno 27] checkpoint: could not write {tmp_path / 'c.pt'}: File too large" in out
    assert "previous checkpoint there (if any) is unchanged" in out
    assert out.strip().endswith("step 1")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


READ_ONLY = """
    import sys, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from gpex_gpytorch import Distiller
    from gpex_gpytorch.distillation import load_checkpoint

    class Counting(nn.Linear):
        calls = 0

        def forward(self, x):
            Counting.calls += 1
            return super().forward(x)

    path = sys.argv[1]
    try:
        Distiller(Counting(4, 2), embedding_dim=2, steps=10, checkpoint_every=5, checkpoint_path=path,
                  progress=False).fit(TensorDataset(torch.randn(20, 4)))
    except OSError as error:
        print(type(error).__name__, error)
    print("ann calls", Counting.calls)
    print("step", load_checkpoint(path)["step"])
"""


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
def test_a_read_only_checkpoint_folder_is_reported_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "c.pt"
    save_checkpoint(path, {"format": "x", "step": 7})
    before = path.read_bytes()
    folder.chmod(0o555)
    try:
        out = _finish(_python(READ_ONLY, str(path), prefix=WITHOUT_OVERRIDE if os.geteuid() == 0 else ()))
    finally:
        folder.chmod(0o755)
    assert f"PermissionError [Errno 13] checkpoint_path: cannot write checkpoints to {folder}" in out
    assert "ann calls 0" in out  # found before any work
    assert "step 7" in out and path.read_bytes() == before
