"""``python -m fastmuon <command>``: the command-line tools that ship with the package."""

import argparse
import sys

COMMANDS = {
    "bench": (
        "fastmuon.bench",
        "time and error of every orthogonalization method and backend on one GPT-2-small block, "
        "against a fp32 Newton-Schulz with addmm (python -m fastmuon bench --help)",
    ),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m fastmuon",
        description="fastmuon: fast, tested Muon-family optimizers for PyTorch and MLX.",
        epilog="The training demo lives in the source tree: make demo.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        parser.print_help(sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
