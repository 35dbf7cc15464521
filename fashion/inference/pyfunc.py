"""The bundle as an MLflow pyfunc model: `mlflow.pyfunc.load_model` and `mlflow models serve` work.

Input: a DataFrame with one image per row, as base64 text in an `image` column (what a JSON
request to `mlflow models serve` can carry) or as a file path in a `path` column. Output: one row
per image with `<attribute>` (label), `<attribute>_confidence` (calibrated) and `<attribute>_status`
(`accepted` or `needs_review`, from the bundle's thresholds) columns, plus `error` for rows whose
image could not be read (the other rows are still predicted). The taxonomy levels are decoded
together, as `fashion-predict` and the API do.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from fashion.data.images import ImageReadError, base64_bytes, draft, to_rgb
from fashion.machine import installed

BUNDLE_ARTIFACT = "bundle"


def decode_base64_image(text: str, min_side: int | None = None) -> np.ndarray:
    """`min_side`: as `load_rgb`'s (the model's `decode_side`)."""
    try:
        raw = base64_bytes(text)
        with Image.open(io.BytesIO(raw)) as image:
            draft(image, min_side)
            return to_rgb(image)
    except Exception as err:  # binascii, PIL and size errors all mean the same to the caller
        raise ImageReadError(f"not a decodable base64 image: {err}") from err


def spark_task_cpus() -> int | None:
    """Inside a Spark task, the cores Spark gave it (`spark.task.cpus`, 1 by default): an executor runs one
    Python worker per concurrent task, and each spreading onnxruntime over every core oversubscribes them.
    Anywhere else None: every core."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    task = TaskContext.get()
    return task.cpus() if task is not None else None


class FashionTaggerPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from fashion.inference.runtime import load_predictor

        # runtime auto: onnxruntime when the bundle has model.onnx, as fashion-predict, so both give the same numbers
        self.predictor = load_predictor(bundle=context.artifacts[BUNDLE_ARTIFACT], threads=spark_task_cpus())

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "image" not in model_input and "path" not in model_input:
            raise ValueError("input needs an 'image' column (base64) or a 'path' column")
        # A model batch at a time: Spark hands a worker 10,000 rows at once (Arrow's batch), and decoding them all
        # first held every decoded photo in memory, in each of an executor's workers.
        size = self.predictor.batch_size
        rows = [row for start in range(0, len(model_input), size)
                for row in self.predict_rows(model_input.iloc[start:start + size])]
        frame = pd.DataFrame(rows, columns=output_columns(self.predictor.attributes))   # every column, always
        # Missing text is None, not NaN (pandas' string inference), so Spark's string columns get nulls, not "nan".
        for column in frame.columns:
            if not column.endswith("_confidence"):
                frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        return frame

    def predict_rows(self, model_input: pd.DataFrame) -> list[dict]:
        """One model batch of rows: each row's columns, or its `error` when its image could not be read."""
        images, errors = [], []
        for _, row in model_input.iterrows():
            try:
                images.append(self.decode(row))
                errors.append(None)
            except (ImageReadError, OSError, KeyError) as err:
                images.append(None)
                errors.append(str(err))
        good = [i for i, image in enumerate(images) if image is not None]
        predictions = self.predictor.predict([images[i] for i in good]) if good else []
        rows = [{"error": e} for e in errors]
        for index, prediction in zip(good, predictions):
            for attribute, p in prediction.items():
                rows[index][attribute] = p.label
                rows[index][f"{attribute}_confidence"] = p.confidence
                rows[index][f"{attribute}_status"] = p.status
        return rows

    def decode(self, row: pd.Series) -> np.ndarray:
        """A row's base64 `image`, else the file at its `path`; a row with neither (a null in a table that
        mixes both, a manifest row without a path) is that row's error, not the batch's."""
        if isinstance(row.get("image"), str):
            return decode_base64_image(row["image"], self.predictor.trained.preprocessing.decode_side)
        if not isinstance(row.get("path"), str) or not row["path"]:
            raise ImageReadError("the row has no image: neither an 'image' (base64) nor a 'path'")
        return self.predictor.load(row["path"])


OUTPUT_KINDS = (("string", ""), ("double", "_confidence"), ("string", "_status"))


def output_columns(attributes: list[str]) -> list[str]:
    return [f"{a}{suffix}" for a in attributes for _, suffix in OUTPUT_KINDS] + ["error"]


def signature(attributes: list[str]) -> ModelSignature:
    """Input: an `image` (base64) or a `path` column, either may be absent; output: label, confidence and
    status per attribute, and `error` for a row whose image could not be read."""
    outputs = [ColSpec(kind, f"{a}{suffix}") for a in attributes for kind, suffix in OUTPUT_KINDS]
    return ModelSignature(Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)]),
                          Schema([*outputs, ColSpec("string", "error", required=False)]))


def input_example() -> pd.DataFrame:
    """One white 3:4 product photo as base64 (what a JSON request to `mlflow models serve` carries)."""
    buffer = io.BytesIO()
    Image.new("RGB", (60, 80), "white").save(buffer, format="JPEG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]})


def model_requirements() -> list[str] | None:
    """What an environment built for the logged model installs: this project's own dependencies (its code travels
    with the model), at the versions that exported it. MLflow's inference, a subprocess that imports the model
    (4-7 s an export on 2 cores), listed `fashion==0.1.0` (on no index), pyspark and scipy and left out onnxruntime, torch
    and pillow, so `mlflow models serve` without `--env-manager local`, or `mlflow models build-docker`, built an
    environment that could not install or load it. None (MLflow infers) where the project is not installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        declared = [Requirement(line) for line in metadata.requires("fashion") or []]
    except metadata.PackageNotFoundError:
        return None
    pins = []
    for requirement in declared:
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue   # an extra (spark, dev, ...): not what loading the model needs
        version = installed(requirement.name)   # a local build label (torch's `+cu130`) is on no public index
        pins.append(f"{requirement.name}=={version.split('+')[0]}" if version else str(requirement))
    return pins


def log_pyfunc(bundle_dir: str | Path, run_id: str | None = None, name: str = "tagger") -> str:
    """Log the bundle as a pyfunc model (to `run_id`, or the active run) with its signature and an input
    example; returns the model URI."""
    from fashion.config import PACKAGE_DIR
    from fashion.inference.bundle import read_manifest

    context = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(nested=mlflow.active_run() is not None)
    with context as run:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),   # built from code, not unpickled
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=model_requirements(),
            signature=signature(read_manifest(bundle_dir)["attributes"]),
            input_example=input_example(),
        )
        return info.model_uri or f"runs:/{run.info.run_id}/{name}"
