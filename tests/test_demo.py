"""The demo: its learning rates come from the recorded sweep, its corpus is fixed, and a
very short run trains (validation loss falls well below the uniform-guess loss ln 256)."""

import dataclasses
import json
import math
import os

import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
sys.path.insert(0, BENCH)  # the demo lives in bench/demo, outside the package

from demo.config import OPTIMIZERS, QUICK  # noqa: E402
from demo.data import STDLIB_FILES, load_corpus  # noqa: E402
from demo.run import LEARNING_RATES, available_frameworks, run, seconds_to_reach, steps_to_reach  # noqa: E402

SWEEP = os.path.join(BENCH, "results", "lr_sweep.json")


def test_learning_rates_are_the_sweeps_best():
    with open(SWEEP) as f:
        sweep = json.load(f)
    for framework, rates in LEARNING_RATES.items():
        assert sweep[framework]["best"] == rates, framework


def test_corpus_is_the_fixed_stdlib_list():
    corpus = load_corpus()
    assert corpus.files == STDLIB_FILES
    assert len(corpus.val) == pytest.approx(0.1 * (len(corpus.train) + len(corpus.val)), rel=1e-4)


def test_steps_to_reach():
    curve = [(0, 5.0, 0.0), (10, 3.0, 1.5), (20, 2.0, 3.0)]
    assert steps_to_reach(curve, 3.0) == 10 and steps_to_reach(curve, 1.0) is None
    assert seconds_to_reach(curve, 3.0) == 1.5 and seconds_to_reach(curve, 1.0) is None


@pytest.mark.parametrize("framework", available_frameworks())
def test_short_run_learns(framework):
    cfg = dataclasses.replace(QUICK, steps=12, warmup_steps=2, eval_every=6, eval_windows=8)
    results = run(cfg, [framework], progress=False)
    for name in OPTIMIZERS:
        curve = results[framework][name]["curve"]
        assert curve[0][1] == pytest.approx(math.log(256), abs=0.3)  # untrained: ~uniform
        assert curve[-1][1] < curve[0][1] - 1.0, name
        assert [point[2] for point in curve] == sorted(point[2] for point in curve)  # training seconds
