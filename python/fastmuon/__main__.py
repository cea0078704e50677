"""``python -m fastmuon <command>``: the command-line tools that ship with the package."""

import argparse
import importlib
import sys

from . import __version__

COMMANDS = {
    "bench": (
        "fastmuon.bench",
        "time and error of every orthogonalization method and backend on one GPT-2-small block, "
        "against a fp32 Newton-Schulz with addmm (python -m fastmuon bench --help)",
    ),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastmuon",
        description="fastmuon: fast, tested Muon-family optimizers for PyTorch and MLX.",
        epilog="The training demo lives in the source tree: make demo.",
    )
    parser.add_argument("--version", action="version", version=f"fastmuon {__version__}")
    # argparse itself refuses an unknown or missing command (usage, the known commands, exit 2)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, summary) in COMMANDS.items():
        # no -h here: each command's own parser answers its --help
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv=None) -> int:
    # A command's options are its own module's business: everything after the command's name
    # goes to that module's main(argv) untouched.
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser()
    args, command_argv = parser.parse_known_args(argv)
    before_command = argv[: argv.index(args.command)]  # the top level takes no option with a value
    if before_command:
        parser.error(f"unrecognized arguments: {' '.join(before_command)}")
    return importlib.import_module(COMMANDS[args.command][0]).main(command_argv)


if __name__ == "__main__":
    sys.exit(main())
