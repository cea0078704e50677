"""The demo's corpus: a fixed list of the Python standard library's own source files, which
every machine with Python has. Byte-level tokens (vocabulary 256), a fixed 90/10 split.

The files differ a little between Python versions, so results carry the Python version.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

import numpy as np

# Pure-Python modules present (as these paths) in CPython 3.10 - 3.13.
STDLIB_FILES = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "contextlib.py", "copy.py", "csv.py",
    "dataclasses.py", "difflib.py", "enum.py", "fractions.py", "functools.py", "heapq.py",
    "inspect.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pprint.py",
    "random.py", "shlex.py", "statistics.py", "string.py", "textwrap.py", "tokenize.py",
    "typing.py", "uuid.py", "weakref.py",
)  # fmt: skip
VOCAB_SIZE = 256
VALIDATION_FRACTION = 0.1


@dataclass
class Corpus:
    train: np.ndarray  # uint8 tokens
    val: np.ndarray
    files: tuple


def load_corpus(stdlib_dir: str | None = None) -> Corpus:
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    chunks, found = [], []
    for name in STDLIB_FILES:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                chunks.append(f.read())
            found.append(name)
    if not chunks:
        raise FileNotFoundError(f"none of the demo's standard-library files were found under {root}")
    data = np.frombuffer(b"\n".join(chunks), dtype=np.uint8)
    split = int(len(data) * (1 - VALIDATION_FRACTION))
    return Corpus(train=data[:split], val=data[split:], files=tuple(found))


def batches(tokens: np.ndarray, batch_size: int, context: int, seed: int):
    """Endless (inputs, targets) int32 batches of random windows, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(tokens) - context - 1, size=batch_size)
        windows = np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int32)
        yield windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, count: int, context: int, seed: int = 1234):
    """A fixed set of validation windows, the same for every optimizer and framework."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - context - 1, size=count)
    windows = np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int32)
    return windows[:, :-1], windows[:, 1:]
