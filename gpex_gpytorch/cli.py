"""The ``gpex`` console script: ``gpex <command> [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> (module, one-line help); each module is imported when the parser is built.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gpex_gpytorch.commands.demo", "train a digits CNN, explain it with GPs, report faithfulness"),
    "distill": ("gpex_gpytorch.commands.distill", "explain your own network on your own data; save the explainer"),
    "explain": (
        "gpex_gpytorch.commands.explain",
        "explain inputs with a saved explainer (--explainer), or the `gpex demo` network (report, grids)",
    ),
    "pca": ("gpex_gpytorch.commands.pca", "principal components vs neurons of the digits CNN: completeness, grids"),
    "pathways": ("gpex_gpytorch.commands.pathways", "neural pathways (GEN-CNP) of the digits CNN vs baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="gpex", description="Explain PyTorch networks with GPEX.")
    parser.add_argument("--version", action="version", version=f"gpex_gpytorch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
