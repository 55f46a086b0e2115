"""Side-feature matrices for LightFM, built from a Dataset's ``items`` / ``users`` frames.

Each row is aligned with an InteractionMatrix's ``item_ids`` / ``user_ids`` (pass those arrays);
each column is a named feature:

- ``id:<id>``          identity feature (when ``identity=True``), so warm rows can memorize;
- ``cat:<category>``   item categories / tags;
- ``word:<token>``     title/description tokens (when ``text=True``);
- ``<key>=<value>``    user attribute values.

Feature sets are turned into a CSR matrix by scikit-learn's ``MultiLabelBinarizer``; text is
tokenized by ``CountVectorizer``'s analyzer. Passing the ``feature_names`` of a training matrix
builds rows for new items/users in the same column space (unknown features are dropped), which
is how LightFM represents cold-start items and users.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import MultiLabelBinarizer, normalize

logger = logging.getLogger(__name__)

#: words of two or more letters (no digits: synthetic titles carry "#123", a per-item id)
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


def build_item_features(
    items: pd.DataFrame,
    item_ids: Sequence[str],
    *,
    identity: bool = True,
    categories: bool = True,
    text: bool = False,
    stop_words: str | None = "english",
    normalize_rows: bool = True,
    feature_names: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Item feature matrix (len(item_ids) × n_features, float32 CSR) and its column names.

    Ids of ``item_ids`` absent from ``items`` get only their identity feature (if any).
    """
    frame = _aligned(items, "item_id", item_ids)
    analyzer = (
        CountVectorizer(token_pattern=TOKEN_PATTERN, stop_words=stop_words, lowercase=True).build_analyzer()
        if text
        else None
    )
    rows: list[set[str]] = []
    for item_id, row in zip(item_ids, frame.itertuples(index=False)):
        feats: set[str] = set()
        if identity:
            feats.add(f"id:{item_id}")
        if categories and isinstance(row.categories, (list, tuple, np.ndarray)):
            feats.update(f"cat:{c}" for c in row.categories)
        if analyzer is not None:
            text_value = f"{_str(row.title)} {_str(row.description)}"
            feats.update(f"word:{t}" for t in analyzer(text_value))
        rows.append(feats)
    return _binarize(rows, feature_names, normalize_rows)


def build_user_features(
    users: pd.DataFrame,
    user_ids: Sequence[str],
    *,
    identity: bool = True,
    keys: Iterable[str] | None = None,
    exclude_keys: Iterable[str] = (),
    normalize_rows: bool = True,
    feature_names: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """User feature matrix from attribute values (``"key=value"``) and its column names.

    ``keys`` restricts to these attribute keys (default: all), ``exclude_keys`` drops some
    (e.g. a label that must not leak into training).
    """
    frame = _aligned(users, "user_id", user_ids)
    keep = None if keys is None else set(keys)
    drop = set(exclude_keys)
    rows: list[set[str]] = []
    for user_id, attrs in zip(user_ids, frame["attributes"]):
        feats: set[str] = {f"id:{user_id}"} if identity else set()
        if isinstance(attrs, dict):
            feats.update(
                f"{k}={v}" for k, v in attrs.items() if (keep is None or k in keep) and k not in drop and v is not None
            )
        rows.append(feats)
    return _binarize(rows, feature_names, normalize_rows)


def _aligned(frame: pd.DataFrame, id_column: str, ids: Sequence[str]) -> pd.DataFrame:
    """Rows of ``frame`` in the order of ``ids`` (NaN rows for ids the frame lacks)."""
    ids = np.asarray(ids, dtype=object).astype(str)
    out = frame.assign(**{id_column: frame[id_column].astype(str)}).drop_duplicates(id_column, keep="last")
    out = out.set_index(id_column).reindex(ids)
    missing = int(out.iloc[:, 0].isna().sum()) if len(out.columns) else 0
    if missing:
        logger.info("%d of %d ids have no %s row; they get identity features only", missing, len(ids), id_column)
    return out.reset_index(drop=True)


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _binarize(
    rows: list[set[str]], feature_names: Sequence[str] | None, normalize_rows: bool
) -> tuple[sp.csr_matrix, np.ndarray]:
    if feature_names is None:
        binarizer = MultiLabelBinarizer(sparse_output=True)
        matrix = binarizer.fit_transform(rows)
    else:
        binarizer = MultiLabelBinarizer(classes=list(feature_names), sparse_output=True)
        with warnings.catch_warnings():
            # "unknown class(es) will be ignored": intended for features unseen in training
            warnings.simplefilter("ignore", UserWarning)
            matrix = binarizer.fit_transform(rows)
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    if normalize_rows:
        # LightFM sums feature embeddings; l1 rows keep every row's representation on one scale.
        matrix = normalize(matrix, norm="l1", axis=1).astype(np.float32)
    return matrix, np.asarray(binarizer.classes_, dtype=object)
