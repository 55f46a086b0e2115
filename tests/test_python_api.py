"""The Python API (pipelines.library): README's example runs as printed; load reads a bundle
folder or the registry and names what is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.library import load
from pipelines.train import IndexConfig, ModelConfig, TrainConfig, build_bundle, fit_model
from recsys.bundle import BundleError
from recsys.datasets.synthetic import generate_synthetic
from recsys.matrix import InteractionMatrix
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The first ```python block of README.md's "Python API" section."""
    section = (ROOT / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short():
    assert len(readme_python_example().splitlines()) <= 15


def test_readme_python_example_runs_as_printed(tmp_path):
    checks = """
got = [item.item_id for item in recommender.recommend_for_user("u1", history, k=5).items]
assert len(got) == 5 and not set(got) & set(history), got
assert load(version=result.version).bundle.kind == "als"
print("checked")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", readme_python_example() + checks],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("version 1 nDCG@10 ") and float(lines[0].split()[-1]) > 0
    assert len([line for line in lines if re.fullmatch(r"i\d+ -?\d+\.\d+", line)]) == 5
    assert lines[-1] == "checked"
    assert (tmp_path / ".recsys" / "mlflow.db").is_file()  # the embedded default, in the working folder


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory):
    data = generate_synthetic(n_users=200, n_items=120, n_events=5_000, seed=4)
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 8, "iterations": 5}), index=IndexConfig(kind="exact")
    )
    matrix = InteractionMatrix.from_events(data.events, weighting=config.weighting, alpha=config.alpha)
    bundle = build_bundle(config, fit_model(config.model, matrix, data), matrix, {}, data)
    return data, bundle.save(tmp_path_factory.mktemp("api") / "bundle")


def test_load_a_bundle_folder_with_its_catalog(bundle_folder):
    data, folder = bundle_folder
    recommender = load(path=folder, catalog=data.items)
    answer = recommender.recommend_for_items(["i3", "i7"], k=4)
    titles = data.items.set_index("item_id")["title"]
    assert answer.strategy == "fold_in" and len(answer.items) == 4
    assert all(item.title == titles[item.item_id] for item in answer.items)
    assert not {"i3", "i7"} & {item.item_id for item in answer.items}


def test_load_refuses_a_tampered_bundle(bundle_folder, tmp_path):
    import shutil

    _, folder = bundle_folder
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    vectors = copy / "item_vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        load(path=copy)


def test_load_names_what_is_missing(bundle_folder, tmp_path):
    _, folder = bundle_folder
    with pytest.raises(ValueError, match="one of alias, version or path"):
        load("production", path=folder)
    settings = Settings(data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no model version behind alias recsys@production"):
        load(settings=settings)
    with pytest.raises(ValueError, match="no version 7 of model 'recsys'"):
        load(version=7, settings=settings)
