"""The commands reject bad arguments at parsing, before any work, and report a corrupted demo folder plainly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from gpex_gpytorch.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
        (["demo", "--epochs", "-1"], "argument --epochs: expected an integer >= 1, got -1"),
        (["demo", "--threads", "0"], "argument --threads: expected an integer >= 1, got 0"),
        (["demo", "--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
        (["explain", "--checkpoint", ".", "--k", "0"], "argument --k: expected an integer >= 1, got 0"),
        (["pca", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["pca", "--max-examples", "-3"], "argument --max-examples: expected an integer >= 0, got -3"),
        (["pathways", "--permutations", "-1"], "argument --permutations: expected an integer >= 0, got -1"),
        (["pathways", "--cnn-epochs", "0"], "argument --cnn-epochs: expected an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_stop_at_parsing_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(out)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


class _Payload:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("unpickled",))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a zip file at all", r"truncated or corrupted, or not the network's weights"),
        (None, r"unpickling stopped: .*print"),
    ],
)
def test_explain_reports_a_corrupted_ann_file_plainly(
    content: bytes | None, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "metrics.json").write_text(json.dumps({"seed": 0, "steps": 2}))
    if content is None:
        torch.save({"weight": _Payload()}, demo / "ann.pt")
    else:
        (demo / "ann.pt").write_bytes(content)
    assert main(["explain", "--checkpoint", str(demo), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "gpex explain: error: checkpoint: " in err
    assert re.search(reason, err), err
    assert "weights_only=False" not in err and "unpickled" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
