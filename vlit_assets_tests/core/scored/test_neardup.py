"""Near-duplicate pairs, clusters, novelty and spread, checked against brute force."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from vlit_assets.core.scored.embed import MiniLMEmbedder, conversation_vectors
from vlit_assets.core.scored.figures import diversity_figures
from vlit_assets.core.scored.neardup import (
    find_neighbours,
    mean_pairwise_cosine,
    near_duplicates,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n: int = 700, copies: int = 60, seed: int = 3) -> np.ndarray:
    """Anisotropic random unit vectors; ``copies`` rows replaced by perturbed copies of others."""
    rng = np.random.default_rng(seed)
    d = 48
    x = rng.standard_normal((n, d)) * np.linspace(2.0, 0.3, d)
    src = rng.choice(n // 2, copies, replace=False)
    dst = n // 2 + rng.choice(n // 2, copies, replace=False)
    # Noise scales straddle the 0.95 threshold so some copies are in and some just out.
    noise = _unit(rng.standard_normal((copies, d))) * rng.uniform(0.05, 0.5, (copies, 1))
    x = _unit(x)
    x[dst] = _unit(x[src] + noise)
    return x


def _brute_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("dims", [4, 12, None])
def test_candidate_scan_finds_exactly_the_brute_force_pairs(dims):
    x = _planted()
    expected = _brute_pairs(x, 0.95)
    assert 10 < len(expected) < 60  # the planted set has pairs on both sides of the threshold
    found = find_neighbours(x, 0.95, dims=dims, tile=128)  # several tiles and a ragged edge
    assert set(zip(found.pair_i.tolist(), found.pair_j.tolist(), strict=True)) == expected
    assert (found.pair_cosine >= 0.95).all()


def test_exact_scan_nearest_neighbour_matches_brute_force():
    x = _planted(n=300, seed=5)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    found = find_neighbours(x, 0.95, dims=None, tile=64)
    np.testing.assert_allclose(found.nearest_cosine, sims.max(axis=1), atol=1e-5)


def test_reduced_scan_novelty_is_exact_for_rows_with_a_near_duplicate():
    x = _planted()
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    best = sims.max(axis=1)
    found = find_neighbours(x, 0.95, dims=8, tile=128)
    has_dup = best >= 0.95
    np.testing.assert_allclose(found.nearest_cosine[has_dup], best[has_dup], atol=1e-5)
    # Elsewhere the neighbour may be approximate, but never better than the true nearest.
    assert (found.nearest_cosine <= best + 1e-5).all()


def test_clusters_are_connected_components_with_the_smallest_id():
    base = _unit(np.random.default_rng(0).standard_normal((5, 16)))
    step = _unit(base[1:2] - (base[1:2] @ base[0]) * base[0:1])
    # a-b and b-c are near duplicates (cos 0.97), a-c is not (cos ~0.88): still one cluster.
    angles = np.deg2rad([0.0, 14.0, 28.0])
    chain = _unit(np.cos(angles)[:, None] * base[0:1] + np.sin(angles)[:, None] * step)
    x = np.vstack([chain, base[2:]])
    ids = ["c_z", "c_b", "c_m", "u_1", "u_2", "u_3"]
    frame = near_duplicates(ids, x, 0.95, dims=None)
    got = dict(zip(frame["conversation_id"], frame["cluster_id"], strict=True))
    assert got == {
        "c_z": "c_b",
        "c_b": "c_b",
        "c_m": "c_b",
        "u_1": "u_1",
        "u_2": "u_2",
        "u_3": "u_3",
    }
    assert frame["cluster_size"].to_list() == [3, 3, 3, 1, 1, 1]
    assert frame.filter(pl.col("conversation_id") == "c_z")["nearest_id"].item() == "c_b"


def test_cluster_ids_do_not_move_when_rows_are_shuffled_or_added():
    x = _planted()
    ids = [f"conv_{i:04d}" for i in range(len(x))]
    first = near_duplicates(ids, x, dims=8, tile=128)
    order = np.random.default_rng(1).permutation(len(x))
    extra = _unit(np.random.default_rng(2).standard_normal((50, x.shape[1])))
    shuffled = near_duplicates(
        [ids[i] for i in order] + [f"new_{i}" for i in range(50)],
        np.vstack([x[order], extra]),
        dims=8,
        tile=128,
    )
    joined = first.join(shuffled, on="conversation_id", suffix="_2")
    assert joined.height == len(x)
    assert (joined["cluster_id"] == joined["cluster_id_2"]).all()
    assert first["cluster_size"].max() >= 2


def test_single_and_empty_inputs():
    one = near_duplicates(["only"], _unit(np.ones((1, 4))))
    assert one.row(0, named=True) == {
        "conversation_id": "only",
        "cluster_id": "only",
        "cluster_size": 1,
        "nearest_id": None,
        "nearest_cosine": None,
        "novelty": None,
    }
    assert near_duplicates([], np.empty((0, 4), np.float32)).height == 0


def test_bad_vectors_and_ids_are_errors():
    x = _unit(np.ones((2, 4)))
    x[1] *= 3
    with pytest.raises(ValueError, match="conversation b: embedding is not a finite unit vector"):
        near_duplicates(["a", "b"], x)
    with pytest.raises(ValueError, match="unique"):
        near_duplicates(["a", "a"], _unit(np.ones((2, 4))))


def test_spread_and_rate():
    x = _planted()
    sims = x @ x.T
    brute = (sims.sum() - np.trace(sims)) / (len(x) * (len(x) - 1))
    assert mean_pairwise_cosine(x) == pytest.approx(brute, abs=1e-5)
    frame = near_duplicates([f"c{i}" for i in range(len(x))], x, dims=8, tile=128)
    summary = diversity_figures(frame, x)
    clusters = frame["cluster_id"].n_unique()
    assert summary["near_duplicate_rate"] == pytest.approx(1 - clusters / len(x))
    assert summary["semantic_spread"] == pytest.approx(1 - brute, abs=1e-5)
    assert summary["samples_in_near_duplicate_clusters"] > 0


def test_one_word_change_is_a_near_duplicate_and_other_topics_are_not():
    def conv(cid: str, answer: str, question: str = "What is happening in this picture?"):
        return {
            "conversation_id": cid,
            "turns": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer},
                {"from": "human", "value": "What might happen next?"},
                {"from": "gpt", "value": "The players will probably keep passing the ball."},
            ],
        }

    answer = "Several children are playing football on a muddy field after school."
    convs = pl.DataFrame(
        [
            conv("c1", answer),
            conv("c2", answer.replace("muddy", "grassy")),
            conv("c3", "A chef is slicing fresh salmon in a restaurant kitchen."),
            conv("c4", "An old man reads a newspaper on a park bench.", "Who is in the picture?"),
        ]
    )
    vectors = conversation_vectors(convs, MiniLMEmbedder(batch_size=8))
    frame = near_duplicates(vectors.conversation_ids, vectors.conversation, 0.95)
    clusters = dict(zip(frame["conversation_id"], frame["cluster_id"], strict=True))
    assert clusters == {"c1": "c1", "c2": "c1", "c3": "c3", "c4": "c4"}
    assert frame["novelty"][0] < 0.05 < frame["novelty"][3]
