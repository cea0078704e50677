"""``python -m fastmuon <command>``; commands: bench, demo."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "fastmuon.bench", "demo": "fastmuon.demo.run"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m fastmuon {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
