"""Sub-commands of the ``gpex`` console script, one module each.

Each module defines ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``.
"""
