"""The cluster cost model against closed forms: with even shards and full batches, a rank of the
owner all-to-all sends and receives 2 (W - 1) / W^2 of the weights, the gather design
(W - 1) / W (1 + 1 / W); collectives are two per batch against two per matrix. (Its bytes match
the socket counters of bench/bench_fsdp.py at 2 and 4 ranks: bench/results/fsdp.jsonl.)"""

from __future__ import annotations

import pytest

from fastmuon.cluster import MODELS, OWNER_COPIES, chunk_owners, shard_rows, step_cost
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


def test_the_data_parallel_share_out_covers_every_matrix_once_and_balances():
    shapes = [(12, 2304, 768), (12, 768, 768), (12, 3072, 768), (12, 768, 3072), (1, 8, 8)]
    for world in (2, 8, 64):
        plan = chunk_owners(shapes, world)
        loads = [0] * world
        for (n, rows, cols), chunks in zip(shapes, plan):
            assert [lo for lo, _, _ in chunks] == sorted({lo for lo, _, _ in chunks})
            assert sum(hi - lo for lo, hi, _ in chunks) == n and chunks[0][0] == 0 and chunks[-1][1] == n
            for lo, hi, owner in chunks:
                loads[owner] += (hi - lo) * rows * cols
        largest_chunk = max(-(-n // world) * rows * cols for n, rows, cols in shapes)
        assert max(loads) <= sum(loads) / world + largest_chunk  # greedy: within one chunk of even
        assert chunk_owners(shapes, world) == plan  # the same on every rank


def test_replicated_bytes_no_longer_grow_with_the_world():
    """GPT-2-small's Muon matrices (12 of each of 4 shapes): one gather per stack padded every
    rank to a chunk, so at 64 ranks each received 63 matrices per stack (5.25x the weights);
    the share-out by load receives under 2x."""
    shapes = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12
    weights = 2 * sum(r * c for r, c in shapes)
    assert step_cost(shapes, 2, "replicated")["received"] == pytest.approx(weights / 2)
    assert step_cost(shapes, 64, "replicated")["received"] < 2 * weights
