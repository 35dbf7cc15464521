"""Scoring a catalogue on Spark: the bundle's MLflow pyfunc model as a Spark UDF (MLflow's standard
`mlflow.pyfunc.spark_udf`), so each executor loads the model once and scores its partitions in
pandas batches. The optional extra: `pip install -e '.[spark]'` (and a Java runtime).

    from fashion.inference.spark import score_manifest
    score_manifest(spark, "models:/fashion@champion", "catalogue.parquet", "tags.parquet")

Rows are the pyfunc's: `path`, then per attribute the label, `<attribute>_confidence` and
`<attribute>_status`, and `error` for an image that could not be read (the others are still scored),
the same values `fashion-predict` writes for the same images (tested row for row), in no particular order.

Paths are read by the executors: absolute paths of storage each of them mounts, or URIs (`s3://bucket/1.jpg`, read
through fsspec, whose protocol package, s3fs for S3, the executors' Python needs). Relative paths are refused on a
cluster, where they would be taken from each executor's working directory.

Executors run the model in their own Python (`env_manager="local"`), which must have this project installed;
on a cluster whose executors do not, `env_manager="virtualenv"` (or `"uv"`, `"conda"`) has MLflow build the
logged model's environment on each of them from its pinned requirements (the package's code travels with the
model), once per executor, from a package index they can reach.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import mlflow

from fashion.config import progress_bars_for_terminals_only
from fashion.data.styles import is_csv_manifest, no_column, relative_paths, relative_to_the_manifest
from fashion.inference.pyfunc import signature

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EnvManager = Literal["local", "virtualenv", "uv", "conda"]   # mlflow.pyfunc.spark_udf's


def result_type(attributes: list[str]):
    """The pyfunc's output columns as a Spark struct type, in the signature's order."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    kinds = {"string": StringType(), "double": DoubleType()}
    return StructType([StructField(c.name, kinds[c.type.name]) for c in signature(attributes).outputs.inputs])


def score(spark: SparkSession, model_uri: str, images: DataFrame, path_column: str = "path",
          env_manager: EnvManager = "local") -> DataFrame:
    """`images` (a `path_column` of image paths every executor can read) -> one scored row per image."""
    from pyspark.sql import functions as F

    attributes = model_attributes(model_uri)
    struct = result_type(attributes)
    # A manifest is a small file of long-running rows: Spark reads it as one partition, so one task (one core)
    # would score the whole catalogue. Spread the rows over every core the cluster has (round robin: the output
    # is not in the manifest's order, as Spark's outputs are not; join on `path`).
    cores = spark.sparkContext.defaultParallelism
    if images.rdd.getNumPartitions() < cores:
        images = images.repartition(cores)
    progress_bars_for_terminals_only()   # spark_udf downloads the model: no bars in a job's log
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=struct, env_manager=env_manager)
    scored = images.withColumn("prediction", udf(F.struct(F.col(path_column).alias("path"))))
    # spark_udf turns every value of a string field into text, a missing one (an error row's label, a good
    # row's error) included, as "None": make those nulls again, as the pyfunc meant them.
    columns = [F.when(F.col(f"prediction.{f.name}") == "None", F.lit(None)).otherwise(F.col(f"prediction.{f.name}")).alias(f.name)
               if f.dataType.typeName() == "string" else F.col(f"prediction.{f.name}") for f in struct.fields]
    return scored.select(F.col(path_column).alias("path"), *columns)


def score_manifest(spark: SparkSession, model_uri: str, manifest: str, output: str, path_column: str = "path",
                   mode: str = "errorifexists", env_manager: EnvManager = "local") -> int:
    """A CSV or Parquet manifest in, Parquet out; returns the number of error rows. `mode` is Spark's save
    mode: by default an existing output is an error, as fashion-predict refuses one ("overwrite" replaces it);
    `env_manager`: where the executors' Python comes from (the module's docstring)."""
    images = manifest_rows(spark, manifest, path_column)
    first = [row[0] for row in images.limit(20).collect()]
    if unreadable := unreadable_from_executors(spark.sparkContext.master, manifest, first):
        raise ValueError(f"{manifest}: {unreadable}")
    scored = score(spark, model_uri, images, path_column, env_manager)
    scored.write.mode(mode).parquet(output)
    return spark.read.parquet(output).where("error IS NOT NULL").count()


def unreadable_from_executors(master: str, manifest: str, paths: list[str]) -> str | None:
    """Why the executors would miss every one of a manifest's first `paths`, or None. Relative paths are taken from
    each executor's working directory: in local mode, this process's (the job run from another folder than the
    manifest's, as fashion-predict refuses it); on a cluster, a container's, where no catalogue is."""
    if master.startswith("local"):
        return relative_to_the_manifest(manifest, paths)
    relative = relative_paths(paths)
    return (f"relative paths ({relative[0]!r}, ...) are read from each executor's working directory on the cluster "
            f"({master}), not from here: list absolute paths of storage every executor mounts, or URIs (s3://...)"
            ) if relative else None


def manifest_rows(spark: SparkSession, manifest: str, path_column: str = "path") -> DataFrame:
    """The manifest's rows that name a path, as fashion-predict reads them: a CSV line with more or fewer
    fields than its header (an unquoted comma in a path) is an error, where Spark's default reader would
    cut the path at the comma; rows without a path are left out."""
    from pyspark.sql import functions as F

    if is_csv_manifest(manifest):   # `catalogue.csv.gz` was read as Parquet
        if manifest.endswith(".xz"):   # Hadoop has no xz codec: Spark would read the compressed bytes as text
            raise ValueError(f"{manifest}: Spark reads a CSV manifest plain, .gz or .bz2, not .xz: recompress it")
        images = spark.read.option("header", True).option("mode", "FAILFAST").csv(manifest)
        refuse_a_missing_column(images, manifest, path_column)
        try:   # FAILFAST checks only the columns a query parses: parse them all once, in the JVM
            images.write.format("noop").mode("overwrite").save()
        except Exception as err:   # py4j's, with the JVM's stack trace
            record = re.search(r"Malformed CSV record: (.*?)(?: SQLSTATE|$)", str(err), re.MULTILINE)
            if record is None:
                raise
            raise ValueError(f"{manifest}: a line without the header's {len(images.columns)} fields ({record.group(1)!r}); "
                             "a path that holds a comma must be quoted") from None
        # Spark decodes bytes that are not UTF-8 (a spreadsheet's code page) as U+FFFD, without a word: a path
        # that names no file, where fashion-predict refuses the manifest.
        garbled = images.where(F.col(path_column).contains("\ufffd")).select(path_column).first()
        if garbled is not None:
            raise ValueError(f"{manifest}: not UTF-8 text (a path read as {garbled[0]!r}): save it as UTF-8, "
                             "as a spreadsheet's \"CSV UTF-8\" does")
    else:
        images = spark.read.parquet(manifest)
        refuse_a_missing_column(images, manifest, path_column)
        kind = images.schema[path_column].dataType
        if kind.typeName() == "binary":   # BYTE_ARRAY without its UTF-8 annotation: file names all the same
            images = images.withColumn(path_column, F.col(path_column).cast("string"))
        elif kind.typeName() != "string":
            raise ValueError(f"{manifest}: column {path_column!r} holds {kind.simpleString()}, not text: a manifest's "
                             "paths are strings")
    return images.where(F.col(path_column).isNotNull() & (F.col(path_column) != "")).select(path_column)


def refuse_a_missing_column(images: DataFrame, manifest: str, path_column: str) -> None:
    """Before any query: Spark's own refusal logs a page of JVM stack trace first."""
    if path_column not in images.columns:
        raise ValueError(f"{manifest}: {no_column(path_column, images.columns)}")


def local_session(cores: int = 2, app: str = "fashion-score") -> SparkSession:
    """A Spark session on this machine (`local[cores]`) whose Python workers run this interpreter, so
    they see the same packages; on a cluster, the executors need an environment with this project."""
    import os
    import sys

    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable   # read when the session's workers start
    return (SparkSession.builder.master(f"local[{cores}]").appName(app)
            .config("spark.pyspark.python", sys.executable).config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", str(cores)).getOrCreate())


def model_attributes(model_uri: str) -> list[str]:
    """The attributes, read from the logged model's output signature (no model load on the driver)."""
    outputs = mlflow.models.get_model_info(model_uri).signature.outputs.input_names()
    return [name for name in outputs if name != "error" and not name.endswith(("_confidence", "_status"))]
