import numpy as np
import pandas as pd
import pytest

from recsys.matrix import InteractionMatrix


def events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "value"])


def test_ids_sorted_values_summed_and_confidence_weighted():
    m = InteractionMatrix.from_events(
        events([("u2", "b", 1.0), ("u1", "a", 2.0), ("u1", "a", 1.0), ("u2", "c", 4.0)]), alpha=2.0
    )
    assert m.user_ids.tolist() == ["u1", "u2"] and m.item_ids.tolist() == ["a", "b", "c"]
    dense = m.matrix.toarray()
    # summed raw value 3 → 1 + 2·3; absent pairs stay 0 (no confidence)
    np.testing.assert_allclose(dense, [[7, 0, 0], [0, 3, 9]])


def test_categorical_input_gives_the_same_matrix():
    df = events([("u2", "b", 1.0), ("u1", "a", 2.0), ("u3", "c", 4.0)])
    cat = df.assign(
        user_id=pd.Categorical(df.user_id, categories=["u3", "u9", "u1", "u2"]), item_id=df.item_id.astype("category")
    )
    a, b = InteractionMatrix.from_events(df), InteractionMatrix.from_events(cat)
    assert a.user_ids.tolist() == b.user_ids.tolist() == ["u1", "u2", "u3"]  # unused u9 dropped
    assert (a.matrix != b.matrix).nnz == 0


def test_fixed_index_space_drops_unknown_ids():
    full = InteractionMatrix.from_events(events([("u1", "a", 1.0), ("u2", "b", 1.0)]))
    part = InteractionMatrix.from_events(
        events([("u2", "b", 1.0), ("u9", "a", 1.0), ("u1", "zz", 1.0)]),
        user_ids=full.user_ids,
        item_ids=full.item_ids,
        weighting="none",
    )
    assert part.shape == full.shape and part.matrix.nnz == 1 and part.matrix[1, 1] == 1


def test_bm25_and_unknown_weighting():
    rows = [(f"u{u}", "a", 1.0) for u in range(10)] + [("u0", "b", 1.0)]
    m = InteractionMatrix.from_events(events(rows), weighting="bm25")
    assert m.matrix.nnz == 11
    # for the same user, the rare item weighs more than the one everybody touched
    assert m.matrix[0, 1] > m.matrix[0, 0]
    with pytest.raises(ValueError, match="weighting"):
        InteractionMatrix.from_events(events([("u1", "a", 1.0)]), weighting="magic")
