"""The cluster cost model against closed forms: with even shards and full batches, a rank of the
owner all-to-all sends and receives 2 (W - 1) / W^2 of the weights, the gather design
(W - 1) / W (1 + 1 / W); collectives are two per batch against two per matrix. (Its bytes match
the socket counters of bench/bench_fsdp.py at 2 and 4 ranks: bench/results/fsdp.jsonl.)"""

from __future__ import annotations

import pytest

from fastmuon.cluster import MODELS, OWNER_COPIES, shard_rows, step_cost
from fastmuon.flops import iteration_flops


@pytest.mark.parametrize("world", [2, 4, 8])
def test_bytes_match_the_closed_forms(world):
    shapes = [(64, 48)] * (3 * world)
    weights = 4 * sum(r * c for r, c in shapes)
    new = step_cost(shapes, world, "all-to-all", element_bytes=4)
    old = step_cost(shapes, world, "gather", element_bytes=4)
    assert new["sent"] == new["received"] == pytest.approx(weights * 2 * (world - 1) / world**2)
    assert old["received"] == pytest.approx(weights * (world - 1) / world * (1 + 1 / world))
    assert new["collectives"] == 1 + 2 * 3 and old["collectives"] == 1 + 2 * 3 * world
    assert new["flops"] == pytest.approx(3 * iteration_flops("polar_express", 5, (64, 48))[0])


def test_uneven_and_short_batches():
    assert list(shard_rows(13, 4)) == [4, 4, 4, 1] and list(shard_rows(3, 4)) == [1, 1, 1, 0]
    # one matrix of 13 x 10 on 4 ranks: the owner (rank 0) gets 9 rows and returns them
    cost = step_cost([(13, 10)], 4, "all-to-all", element_bytes=1)
    assert cost["received"] == 90 and cost["sent"] == 90


def test_memory_of_the_all_to_all_does_not_grow_with_the_model():
    few, many = (step_cost([(1024, 1024)] * n, 4, "all-to-all", element_bytes=4) for n in (16, 64))
    assert few["transient"] == many["transient"] == OWNER_COPIES * 4 * 1024**2
    gathered = step_cost([(1024, 1024)] * 64, 4, "gather", element_bytes=4)
    assert gathered["transient"] > 64 * 4 * 1024**2  # the whole stack on every rank


def test_models_and_designs():
    assert len(MODELS["Llama-2-7B"]) == 32 * 7
    assert abs(sum(r * c for r, c in MODELS["Llama-2-7B"]) - 6.48e9) < 0.01e9  # 7B less embeddings, head, norms
    with pytest.raises(ValueError, match="design"):
        step_cost([(4, 4)], 2, "ring")
