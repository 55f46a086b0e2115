"""ModelBundle: the one verified artifact that moves from training to serving.

A folder holding ``manifest.json`` (model kind, params, dims, metric, data stats, metrics,
sha256 of every other file), the id arrays, the vectors (``.npy``, memory-mapped on load)
and the item indexes. Written atomically: built in a temporary sibling folder, then renamed.
``ModelBundle.load`` re-hashes every file and refuses a bundle that does not match.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from recsys.index.annoy_index import file_sha256, load_index
from recsys.index.base import ItemIndex

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle folder that is incomplete, corrupt or inconsistent."""


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
                "created_at": datetime.now(timezone.utc).isoformat(),
                "files": {
                    str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
                },
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = folder
        logger.info("wrote bundle %s (%s, %d users, %d items)", folder, self.kind, len(self.user_ids), len(self.item_ids))
        return folder

    @classmethod
    def load(cls, folder: Path, verify: bool = True) -> "ModelBundle":
        """Load (vectors memory-mapped); with ``verify`` every file's sha256 must match."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle manifest unreadable in {folder}: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}")
        if verify:
            for rel, digest in manifest["files"].items():
                path = folder / rel
                if not path.exists():
                    raise BundleError(f"bundle file missing: {rel}")
                if file_sha256(path) != digest:
                    raise BundleError(f"bundle file {rel} does not match its checksum")
        try:
            bundle = cls(
                kind=manifest["kind"],
                params=manifest["params"],
                metric=manifest["metric"],
                user_ids=np.array(json.loads((folder / "user_ids.json").read_text()), dtype=object),
                item_ids=np.array(json.loads((folder / "item_ids.json").read_text()), dtype=object),
                user_vectors=np.load(folder / "user_vectors.npy", mmap_mode="r"),
                item_vectors=np.load(folder / "item_vectors.npy", mmap_mode="r"),
                item_popularity=np.load(folder / "item_popularity.npy"),
                indexes={role: load_index(folder / f"index_{role}", verify=False) for role in manifest["indexes"]},
                extras={name: np.load(folder / f"extra_{name}.npy", mmap_mode="r") for name in manifest["extras"]},
                objects={name: joblib.load(folder / f"object_{name}.joblib") for name in manifest.get("objects", [])},
                info=manifest["info"],
                path=folder,
            )
        except BundleError:
            raise
        except Exception as exc:  # a truncated .npy or annoy file surfaces here
            raise BundleError(f"bundle {folder} could not be loaded: {exc}") from exc
        if bundle.dims != manifest["dims"]:
            raise BundleError(f"bundle dims {bundle.dims} differ from manifest {manifest['dims']}")
        return bundle
