"""ALS trained by Apache Spark (``model: {kind: als, engine: spark}``): the same model as
:class:`~recsys.models.als.ALSEmbedder`, fitted on a Spark cluster instead of in this process.

Where Spark runs is configuration, not a model parameter: ``RECSYS_SPARK_MASTER`` (``local[*]``
by default; ``spark://host:7077`` or ``k8s://https://…`` in production), with
``RECSYS_SPARK_WORK_DIR``, ``RECSYS_SPARK_DRIVER_MEMORY`` and ``RECSYS_SPARK_CONF`` beside it
(:class:`recsys.settings.Settings`). The hyperparameters are implicit's, so one config trains on
either engine and the fitted embedder is an ``als`` model like any other: float32
``user_vectors_``/``item_vectors_`` aligned with the matrix, ``dot`` metric, ALS ``fold_in``. Its
bundle goes through the same Annoy → MLflow registry → API path.

pyspark is the optional extra ``recsys-service[spark]`` and needs a Java runtime (17); both are
imported/checked only when a Spark fit starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsys.models.als import ALSEmbedder
from recsys.models.base import TrainData

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys.settings import Settings

logger = logging.getLogger(__name__)

#: Spark's preference is ``rating > 0``; an entry whose confidence is exactly 1 (a zero value)
#: must still count as a positive, so its rating is this instead of 0 (confidence 1 + 1e-6).
MIN_RATING = 1e-6

#: columns of the interaction hand-off (see :func:`write_interactions`)
USER_COL, ITEM_COL, WEIGHT_COL = "user", "item", "weight"


class SparkUnavailableError(ValueError):
    """pyspark or Java is missing: the Spark engine cannot start. A ValueError like other fixable
    configuration errors, so the CLI reports it as one line ``error: …`` (exit code 2)."""


class SparkALSEmbedder(ALSEmbedder):
    """Implicit-feedback ALS fitted by ``pyspark.ml.recommendation.ALS(implicitPrefs=True)``.

    Same parameters and the same model as :class:`ALSEmbedder`; how each maps onto Spark:

    - **confidence / alpha.** The input matrix already holds the confidence of every pair,
      ``w = 1 + alpha·value`` for ``weighting: confidence`` (``recsys.matrix.weight``; ``alpha``
      is applied there, not again here, exactly as in ``ALSEmbedder``). implicit takes the matrix
      entries as the confidence itself (``c = alpha_implicit · w`` with ``alpha_implicit = 1``).
      Spark instead takes a rating ``r`` and builds ``c = 1 + alpha_spark · |r|`` with preference
      ``r > 0``. So Spark gets ``r = w − 1`` with ``alpha_spark = 1``; for confidence weighting
      that is ``r = alpha·value``, i.e. the same as raw values with ``alpha_spark = alpha``, and
      both engines solve with identical ``c``. Spark cannot express ``c < 1``: entries weighted
      below 1 (possible with bm25/tfidf weighting) are raised to ``c = 1`` (logged).
    - **regularization.** implicit adds ``λ·I`` to every row's normal equations; Spark adds
      ``regParam · n·I`` where ``n`` is the row's number of interactions (ALS-WR). We pass
      ``regParam = λ / n̄`` with ``n̄ = nnz / √(n_users·n_items)``, the geometric mean of the
      average user and item counts, so a row with a typical count gets implicit's penalty (busier
      rows get more, sparser less). ``fold_in`` and serving keep implicit's ``λ``.
    - **factors → rank, iterations → maxIter** (one user and one item sweep each, as implicit),
      ``random_state → seed`` (initial factors differ from implicit's, so vectors are equally good,
      not equal). ``num_threads`` is not used: parallelism is the master's (``local[N]`` or the
      cluster's executor cores). ``show_progress`` turns on Spark's console progress bar.
    """

    def _fit(self, data: TrainData) -> None:
        from recsys.settings import Settings

        settings = Settings()
        matrix = sp.csr_matrix(data.matrix, dtype=np.float32)
        n_users, n_items = matrix.shape
        if matrix.nnz and float(matrix.data.min()) < 1.0:
            logger.warning(
                "%d entries have confidence below 1; Spark ALS treats them as confidence 1",
                int((matrix.data < 1.0).sum()),
            )
        reg_param = spark_reg_param(self.regularization, matrix)
        marks = [("start", time.perf_counter())]
        with (
            _quiet_pyspark_warnings(),
            _work_folder(settings) as work,
            spark_session(settings, show_progress=self.show_progress) as spark,
        ):
            from pyspark.ml.recommendation import ALS
            from pyspark.sql import functions as F

            marks.append(("session", time.perf_counter()))
            # One ALS block per core: Spark's default of 10 only adds tasks on a small master.
            blocks = max(2, spark.sparkContext.defaultParallelism)
            spark.conf.set("spark.sql.shuffle.partitions", str(blocks))
            interactions = read_interactions(spark, write_interactions(matrix, work / "interactions"))
            marks.append(("handoff", time.perf_counter()))
            ratings = interactions.select(
                USER_COL, ITEM_COL, F.greatest(F.col(WEIGHT_COL) - 1.0, F.lit(MIN_RATING)).alias("rating")
            )
            spark.sparkContext.setCheckpointDir(str(work / "checkpoints"))
            als = ALS(
                rank=self.factors,
                maxIter=self.iterations,
                regParam=reg_param,
                alpha=1.0,
                implicitPrefs=True,
                userCol=USER_COL,
                itemCol=ITEM_COL,
                ratingCol="rating",
                nonnegative=False,
                numUserBlocks=blocks,
                numItemBlocks=blocks,
            )
            if self.random_state is not None:
                als.setSeed(int(self.random_state))
            logger.info(
                "Spark ALS on %s: %d users × %d items, %d interactions, rank %d, %d iterations, regParam %.3g",
                spark.sparkContext.master,
                n_users,
                n_items,
                matrix.nnz,
                self.factors,
                self.iterations,
                reg_param,
            )
            model = als.fit(ratings)
            marks.append(("als", time.perf_counter()))
            self.user_vectors_ = _collect_factors(model.userFactors, n_users, self.factors)
            self.item_vectors_ = _collect_factors(model.itemFactors, n_items, self.factors)
            self.spark_application_id_ = spark.sparkContext.applicationId
            marks.append(("collect", time.perf_counter()))
        self.model_ = None  # the Spark model lives in a JVM that is gone; the vectors are the model
        self.reg_param_ = reg_param
        marks.append(("stop", time.perf_counter()))
        #: seconds per step: session start, Parquet hand-off, ALS, collecting factors, stop
        self.timings_ = {name: end - begin for (_, begin), (name, end) in pairwise(marks)}
        logger.info("Spark ALS done: %s", {k: round(v, 2) for k, v in self.timings_.items()})


def spark_reg_param(regularization: float, matrix: sp.csr_matrix) -> float:
    """Spark's ``regParam`` equivalent to implicit's ``regularization`` for this matrix
    (see :class:`SparkALSEmbedder`)."""
    n_users, n_items = matrix.shape
    if matrix.nnz == 0:
        return float(regularization)
    typical_count = matrix.nnz / np.sqrt(float(n_users) * float(n_items))
    return float(regularization) / typical_count


def write_interactions(matrix: sp.csr_matrix, folder: Path) -> str:
    """The hand-off to Spark: the weighted triplets (user code, item code, confidence) as Parquet.

    Codes are the row/column positions of the :class:`~recsys.matrix.InteractionMatrix`, so the
    factors Spark returns map back to ids through its ``user_ids``/``item_ids``. Spark reads the
    returned location from its executors: on a real cluster it must be shared storage (this is
    where the offline store's Parquet event log will plug in). Returns the path Spark reads.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    coo = matrix.tocoo()
    table = pa.table(
        {
            USER_COL: coo.row.astype(np.int32),
            ITEM_COL: coo.col.astype(np.int32),
            WEIGHT_COL: coo.data.astype(np.float32),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    # Several files so executors read in parallel (one row group per ~1M interactions).
    parts = max(1, min(16, -(-len(table) // 1_000_000)))
    step = -(-len(table) // parts) if len(table) else 0
    for part in range(parts):
        pq.write_table(table.slice(part * step, step), folder / f"part-{part:05d}.parquet")
    logger.info("wrote %d interactions for Spark to %s", len(table), folder)
    return str(folder)


def read_interactions(spark: SparkSession, location: str) -> DataFrame:
    """The triplets :func:`write_interactions` wrote, as a Spark DataFrame."""
    return spark.read.parquet(location)


def _collect_factors(factors: DataFrame, n_rows: int, rank: int) -> np.ndarray:
    """Spark's (id, features) rows as a float32 array aligned with the matrix; rows Spark never
    saw (no interactions) stay zero, as implicit leaves them."""
    frame = factors.toPandas()
    out = np.zeros((n_rows, rank), dtype=np.float32)
    if len(frame):
        out[frame["id"].to_numpy(dtype=np.int64)] = np.stack(frame["features"].to_numpy()).astype(np.float32)
    return out


def require_spark() -> None:
    """Raise :class:`SparkUnavailableError` (naming the fix) unless pyspark and Java are present."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise SparkUnavailableError(
            "the Spark engine needs pyspark: pip install 'recsys-service[spark]' (and a Java 17 runtime)"
        ) from exc
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None:
        raise SparkUnavailableError(
            "the Spark engine needs a Java runtime (17): install e.g. openjdk-17-jre-headless or set JAVA_HOME"
        )


@contextmanager
def spark_session(
    settings: Settings, *, app_name: str = "recsys-als", show_progress: bool = False
) -> Iterator[SparkSession]:
    """A Spark session on ``settings.spark_master`` for one fit, stopped afterwards.

    An already active session (one the caller made) is used as it is and left running.
    ``spark.driver.memory`` takes effect when a process starts its first session (the JVM).
    """
    require_spark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        logger.info("using the active Spark session on %s", active.sparkContext.master)
        yield active
        return
    # Python workers (if any stage needs one) run this interpreter, i.e. the project's venv.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf: dict[str, Any] = {
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "true" if show_progress else "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": os.environ["PYSPARK_PYTHON"],
        # WARN and above from the JVM's first line on (setLogLevel below only acts once it runs)
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_log4j2_file().as_uri()}",
        **settings.spark_conf,
    }
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    logger.info("Spark session %s on %s", spark.sparkContext.applicationId, spark.sparkContext.master)
    try:
        yield spark
    finally:
        spark.stop()


@contextmanager
def _quiet_pyspark_warnings() -> Iterator[None]:
    """pyspark 4.0–4.3 warns that it does not "fully support" pandas 3 (and about a pandas keyword
    it passes); the one conversion used here (int ids and float arrays through Arrow) is checked
    by tests/test_spark_engine.py."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pyspark\.")
        yield


_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _log4j2_file() -> Path:
    """The driver's log4j2 configuration (WARN), written once per user into the temp folder."""
    path = Path(tempfile.gettempdir()) / f"recsys-spark-log4j2-{os.getuid()}.properties"
    if not path.exists() or path.read_text() != _LOG4J2:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_LOG4J2)
        tmp.replace(path)
    return path


@contextmanager
def _work_folder(settings: Settings) -> Iterator[Path]:
    """A fresh folder for one fit's hand-off and checkpoints, removed afterwards: under
    ``settings.spark_work_dir`` when set (shared storage on a cluster), else a temp folder."""
    if settings.spark_work_dir:
        root = Path(settings.spark_work_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        folder = root / f"als-{uuid.uuid4().hex[:12]}"
        folder.mkdir()
    else:
        if not settings.spark_master.startswith("local"):
            logger.warning(
                "RECSYS_SPARK_WORK_DIR is not set: executors of %s must be able to read this machine's "
                "temp folder (true only for a cluster on this host)",
                settings.spark_master,
            )
        folder = Path(tempfile.mkdtemp(prefix="recsys-spark-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
