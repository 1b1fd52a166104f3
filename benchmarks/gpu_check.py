"""One script for a lent GPU (at most ~8 minutes): tests, step cost up to M = 1e7, and the demo on CUDA.

On a CUDA machine it

(a) runs the test subset marked ``gpu`` (``pytest -m gpu tests``);
(b) measures the median step time and the step / floor ratio (``step_overhead.py``) at
    M = 1e5, 1e6 and 1e7 with 10 heads × D = 64 (the 1e7 cache is 25.6 GB in float32), with peak
    GPU memory per size;
(c) distils the digits demo's CNN on the GPU and on the CPU (same seed, same settings) and checks
    that the faithfulness (mean Pearson) agrees to 1e-3;

and writes everything to one JSON. Without CUDA it runs a seconds-long CPU fallback of the same
three parts (M = 1e3, 1e4; a 2-epoch CNN, 100 distillation steps), so CI and a laptop can check the script.

    python benchmarks/gpu_check.py --out gpu_check.json                    # what the device run executes
    python benchmarks/gpu_check.py --out /tmp/gpu_check.json --cpu-fallback  # force the fallback
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import measure  # noqa: E402


def run_tests() -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
    )
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
    return {"returncode": done.returncode, "summary": tail[0] if tail else "", "seconds": time.perf_counter() - start}


def step_costs(sizes: list[int], steps: int, device: str) -> dict:
    results = {}
    for m in sizes:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            row = measure([m], steps, device=device)
        except torch.OutOfMemoryError as error:
            results[str(m)] = {"error": f"out of memory: {error}"}
            continue
        row = {
            "median_step_s": row["median_step_s"][m],
            "median_floor_s": row["median_floor_s"],
            "step_over_floor": row["step_over_floor"][m],
            "gp_arithmetic_over_floor": row["gp_arithmetic_over_floor"],
        }
        if device == "cuda":
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            row["cache_bytes"] = m * 10 * 64 * 4
        results[str(m)] = row
    return results


def _cnn() -> torch.nn.Module:
    from gpex_gpytorch.models import DigitsCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DigitsCNN(num_classes=10, width=1024)


def demo_faithfulness(device: str, steps: int, epochs: int) -> dict:
    from gpex_gpytorch.commands.demo import DEMO_SETTINGS
    from gpex_gpytorch.datasets import load_digits
    from gpex_gpytorch.distillation import Distiller, faithfulness
    from gpex_gpytorch.models.classifier_training import fit_classifier

    train, test = load_digits(seed=0)
    ann = fit_classifier(_cnn(), train, epochs=epochs, batch_size=32, seed=0)  # on the CPU, as in the demo
    ann.eval()
    out = {}
    for where in dict.fromkeys(["cpu", device]):
        net = _cnn()
        net.load_state_dict(ann.state_dict())
        net.to(where).eval()
        start = time.perf_counter()
        settings = {**DEMO_SETTINGS, "steps": steps}
        model = Distiller(net, seed=0, progress=False, device=where, **settings).fit(train).model_
        seconds = time.perf_counter() - start
        report = faithfulness(model, net, test)
        out[where] = {"pearson_mean": report.pearson_mean, "pearson_min": report.pearson_min, "seconds": seconds}
    if device != "cpu":
        out["pearson_mean_difference"] = abs(out[device]["pearson_mean"] - out["cpu"]["pearson_mean"])
        out["agrees_to_1e-3"] = out["pearson_mean_difference"] <= 1e-3
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu-fallback", action="store_true", help="run the CPU fallback even with CUDA")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_fallback
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(1 if not cuda else torch.get_num_threads())
    start = time.perf_counter()
    result: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "fallback": not cuda,
    }
    result["tests"] = run_tests()
    print("tests:", result["tests"]["summary"], flush=True)
    sizes = [100_000, 1_000_000, 10_000_000] if cuda else [1_000, 10_000]
    result["step_costs"] = step_costs(sizes, steps=30 if cuda else 3, device=device)
    print("step costs:", json.dumps(result["step_costs"]), flush=True)
    result["demo"] = demo_faithfulness(device, steps=4000 if cuda else 100, epochs=10 if cuda else 2)
    print("demo:", json.dumps(result["demo"]), flush=True)
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0 if result["tests"]["returncode"] in (0, 5) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
