"""ModelBundle: the one verified artifact that moves from training to serving.

A folder holding ``manifest.json`` (model kind, params, dims, metric, data stats, metrics,
sha256 of every other file), the id arrays, the vectors (``.npy``) and the item indexes.
Written atomically: built in a temporary sibling folder, then renamed.

``ModelBundle.load`` gives the process its own copy of everything: arrays and objects are read
into memory, Annoy indexes are mapped from a private sealed copy (recsys/index/annoy_index.py).
Each file's sha256 is checked on the very bytes that are used, so a bundle folder changed
under a running server (a write, a truncation) can't change or crash what it serves, and a
corrupt file is refused at load.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from recsys.index.annoy_index import load_index
from recsys.index.base import IndexError_, ItemIndex, file_sha256
from recsys.models.foldin import FoldInSpec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle folder that is incomplete, corrupt or inconsistent."""


class HybridConfig(BaseModel):
    """How the collaborative and content rankings are fused: ``recsys train``'s ``hybrid``
    config, written into the bundle as it was trained and served as written."""

    model_config = ConfigDict(extra="forbid")

    default_mode: Literal["collaborative", "content", "hybrid"] = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    weights: tuple[float, float] = (0.7, 0.3)
    #: ridge penalty of the content → CF mapping for cold-start items
    cold_start_alpha: float = 1.0


class ServingSpec(BaseModel):
    """The ``serving`` entry of a bundle manifest: every default serving applies, as training
    chose it (serving has no defaults of its own)."""

    model_config = ConfigDict(extra="forbid")

    #: popularity calibration strength applied when a request does not say
    calibration: float
    #: the hybrid fusion (None: no content space)
    hybrid: HybridConfig | None
    #: the content encoder's kind (None: no content space)
    content_kind: str | None

    @property
    def default_mode(self) -> str:
        return self.hybrid.default_mode if self.hybrid is not None else "collaborative"


@dataclass
class ModelBundle:
    """In-memory view of a bundle. ``indexes`` maps a role to an index:
    ``user`` answers user-vector queries with the model's own metric, ``item`` answers
    item-to-item similarity (cosine)."""

    kind: str
    params: dict[str, Any]
    metric: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray
    indexes: dict[str, ItemIndex] = field(default_factory=dict)
    #: extra named item-aligned arrays, e.g. content vectors for hybrid serving
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    #: fitted helper objects needed at serving time (joblib files), e.g. the text encoder
    #: for /search and the content→CF mapper for cold-start items. Only ever loaded from our
    #: own checksummed bundles.
    objects: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # data stats, metrics, version…
    #: how serving folds users in through the trained model's own ``fold_in``
    #: (recsys.models.foldin); a bundle without it cannot be served
    fold_in: FoldInSpec | None = None
    #: the defaults serving applies (calibration, hybrid fusion); a bundle without it cannot be served
    serving: ServingSpec | None = None
    #: distinct items of each user in the training matrix: which part of a user's history the
    #: trained vector already holds (the rest is folded in on top of it, recsys/recommender.py)
    user_item_counts: np.ndarray | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        self.item_ids = np.asarray(self.item_ids, dtype=object)
        self._check_shapes()
        self.user_pos = {u: i for i, u in enumerate(self.user_ids.tolist())}
        self.item_pos = {it: i for i, it in enumerate(self.item_ids.tolist())}

    @property
    def dims(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def trained_as_of(self) -> pd.Timestamp | None:
        """The training snapshot time (UTC) from ``info["data"]["as_of"]``, when recorded:
        events stored after it are *fresh* to this model (serving folds them in)."""
        as_of = (self.info.get("data") or {}).get("as_of")
        if not as_of:
            return None
        ts = pd.Timestamp(as_of)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts

    def _check_shapes(self) -> None:
        if self.user_vectors.shape[0] != len(self.user_ids):
            raise BundleError(f"{self.user_vectors.shape[0]} user vectors for {len(self.user_ids)} user ids")
        if self.item_vectors.shape[0] != len(self.item_ids):
            raise BundleError(f"{self.item_vectors.shape[0]} item vectors for {len(self.item_ids)} item ids")
        if self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            raise BundleError("user and item vectors differ in dimension")
        if len(self.item_popularity) != len(self.item_ids):
            raise BundleError("item popularity is not aligned with item ids")
        for role, index in self.indexes.items():
            if index.n_items != len(self.item_ids):
                raise BundleError(f"index {role!r} holds {index.n_items} items, bundle has {len(self.item_ids)}")
        for name, arr in self.extras.items():
            if len(arr) != len(self.item_ids):
                raise BundleError(f"extra array {name!r} is not aligned with item ids")
        if self.user_item_counts is not None and len(self.user_item_counts) != len(self.user_ids):
            raise BundleError("user item counts are not aligned with user ids")
        if self.fold_in is not None and self.fold_in.trained_items > len(self.item_ids):
            raise BundleError(
                f"fold-in spec covers {self.fold_in.trained_items} items, bundle has {len(self.item_ids)}"
            )

    def save(self, folder: Path) -> Path:
        """Write atomically to ``folder`` (which must not exist yet, or is replaced whole)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            (tmp / "user_ids.json").write_text(json.dumps(self.user_ids.tolist()))
            (tmp / "item_ids.json").write_text(json.dumps(self.item_ids.tolist()))
            np.save(tmp / "user_vectors.npy", np.ascontiguousarray(self.user_vectors, dtype=np.float32))
            np.save(tmp / "item_vectors.npy", np.ascontiguousarray(self.item_vectors, dtype=np.float32))
            np.save(tmp / "item_popularity.npy", np.asarray(self.item_popularity, dtype=np.float64))
            if self.user_item_counts is not None:
                np.save(tmp / "user_item_counts.npy", np.asarray(self.user_item_counts, dtype=np.int32))
            index_meta = {role: index.save(tmp / f"index_{role}") for role, index in self.indexes.items()}
            for name, arr in self.extras.items():
                np.save(tmp / f"extra_{name}.npy", np.asarray(arr))
            for name, obj in self.objects.items():
                joblib.dump(obj, tmp / f"object_{name}.joblib")
            manifest = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "params": self.params,
                "metric": self.metric,
                "dims": self.dims,
                "n_users": len(self.user_ids),
                "n_items": len(self.item_ids),
                "indexes": index_meta,
                "extras": sorted(self.extras),
                "objects": sorted(self.objects),
                "info": self.info,
                "fold_in": None if self.fold_in is None else self.fold_in.model_dump(mode="json"),
                "serving": None if self.serving is None else self.serving.model_dump(mode="json"),
                "user_item_counts": self.user_item_counts is not None,
                "created_at": datetime.now(UTC).isoformat(),
                "files": {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = folder
        logger.info(
            "wrote bundle %s (%s, %d users, %d items)", folder, self.kind, len(self.user_ids), len(self.item_ids)
        )
        return folder

    @property
    def capabilities(self) -> frozenset[str]:
        """What serving can do with this bundle (see :func:`manifest_capabilities`)."""
        return _capabilities(self.extras, self.objects)

    @classmethod
    def load(cls, folder: Path, verify: bool = True, manifest_sha256: str | None = None) -> ModelBundle:
        """Load a private in-memory copy; with ``verify`` every file's sha256 must match the
        manifest (and the manifest ``manifest_sha256`` when given)."""
        folder = Path(folder)
        try:
            raw_manifest = (folder / MANIFEST).read_bytes()
            manifest = json.loads(raw_manifest)
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle manifest unreadable in {folder}: {exc}") from exc
        if manifest_sha256 is not None and hashlib.sha256(raw_manifest).hexdigest() != manifest_sha256:
            raise BundleError("bundle manifest.json does not match its checksum")
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            fmt = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise BundleError(f"bundle format {fmt} is not {FORMAT_VERSION}")
        digests: dict[str, str] = manifest["files"] if verify else {}
        if verify:
            missing = [rel for rel in digests if not (folder / rel).is_file()]
            if missing:
                raise BundleError(f"bundle file missing: {missing[0]}")

        def read(rel: str) -> bytes:
            try:
                data = (folder / rel).read_bytes()
            except OSError as exc:
                raise BundleError(f"bundle file {rel} unreadable: {exc}") from exc
            if verify and hashlib.sha256(data).hexdigest() != digests.get(rel):
                raise BundleError(f"bundle file {rel} does not match its checksum")
            return data

        def array(rel: str) -> np.ndarray:
            return npy_from_bytes(read(rel))

        def index(role: str):
            prefix = f"index_{role}/"
            return load_index(
                folder / f"index_{role}",
                verify=verify,
                digests={rel[len(prefix) :]: d for rel, d in digests.items() if rel.startswith(prefix)},
            )

        try:
            bundle = cls(
                kind=manifest["kind"],
                params=manifest["params"],
                metric=manifest["metric"],
                user_ids=np.array(json.loads(read("user_ids.json")), dtype=object),
                item_ids=np.array(json.loads(read("item_ids.json")), dtype=object),
                user_vectors=array("user_vectors.npy"),
                item_vectors=array("item_vectors.npy"),
                item_popularity=array("item_popularity.npy"),
                indexes={role: index(role) for role in manifest["indexes"]},
                extras={name: array(f"extra_{name}.npy") for name in manifest["extras"]},
                objects={
                    name: joblib.load(io.BytesIO(read(f"object_{name}.joblib"))) for name in manifest.get("objects", [])
                },
                info=manifest["info"],
                fold_in=None if manifest["fold_in"] is None else FoldInSpec.model_validate(manifest["fold_in"]),
                serving=None if manifest["serving"] is None else ServingSpec.model_validate(manifest["serving"]),
                user_item_counts=array("user_item_counts.npy") if manifest["user_item_counts"] else None,
                path=folder,
            )
        except BundleError:
            raise
        except KeyError as exc:
            raise BundleError(
                f"bundle {folder}: manifest has no {exc} entry (written by an older version: retrain)"
            ) from exc
        except IndexError_ as exc:
            raise BundleError(f"bundle {folder}: {exc}") from exc
        except Exception as exc:  # a truncated .npy or annoy file surfaces here
            raise BundleError(f"bundle {folder} could not be loaded: {exc}") from exc
        if bundle.dims != manifest["dims"]:
            raise BundleError(f"bundle dims {bundle.dims} differ from manifest {manifest['dims']}")
        return bundle


def npy_from_bytes(data: bytes) -> np.ndarray:
    """A read-only array over the bytes of a ``.npy`` file, without copying them (the bytes
    object is private to the process; a copy would double the peak memory of a load)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if dtype.hasobject:
        raise BundleError("bundle arrays must not hold Python objects")
    count = int(np.prod(shape, dtype=np.int64))
    if f.tell() + count * dtype.itemsize > len(data):
        raise BundleError("array file is truncated")
    return np.frombuffer(data, dtype=dtype, count=count, offset=f.tell()).reshape(
        shape, order="F" if fortran_order else "C"
    )


def _capabilities(extras, objects) -> frozenset[str]:
    caps = {"collaborative"}
    if "content" in extras:
        caps |= {"content_space", "mode:content", "mode:hybrid"}
        if "text_encoder" in objects:
            caps.add("search")
            if "cf_mapper" in objects:
                caps.add("cold_start_items")
    return frozenset(caps)


def manifest_capabilities(manifest: dict[str, Any]) -> frozenset[str]:
    """What a bundle can serve, from its manifest alone: ``collaborative``; with content vectors
    ``content_space`` and the ``mode:content`` / ``mode:hybrid`` modes; with the text encoder
    ``search`` (/search); with the content→CF mapper ``cold_start_items``."""
    return _capabilities(manifest.get("extras") or [], manifest.get("objects") or [])
