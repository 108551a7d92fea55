"""Any tensor model (spec version 2) on every Python-facing surface: TorchModel (JVM) from
PySpark, NativeModel.predict, predict_arrow in mapInArrow and the SQL function, each against
PyTorch's outputs on the four proof models (regression, segmentation, detection, two inputs and
two outputs); bad rows named in error, skipped or kept."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F
from pyspark.sql import types as T

import torchspark
from conftest import ROOT
from torchspark import InputError, NativeModel, TorchModel, predict_arrow

# A wrong-length row's reason, as every surface reports it: the row, the input, the column, the
# declared and the actual number of values.
WRONG_LENGTH = r"row \d+: input `features` \(column `?features`?\): .*\b10\b.*\b9\b"


def _close(actual, expected, atol=1e-5, scale=1.0):
    """Within `atol` of PyTorch's values, in units of `scale`."""
    actual = np.asarray(actual, dtype=np.float64) / scale
    expected = np.asarray(expected, dtype=np.float64) / scale
    assert actual.shape == expected.shape
    diff = np.abs(actual - expected)
    assert np.all(diff <= atol), f"max difference {diff.max()} (tolerance {atol})"


# ---- regression: the diabetes MLP -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp(general) -> str:
    return str(general / "diabetes_mlp.pt")


@pytest.fixture(scope="module")
def tabular(spark, diabetes):
    """id, y, the ten feature columns and `arr` (the same ten as array<double>)."""
    names = diabetes["feature_names"]
    rows = [
        (i, float(y), *map(float, x), [float(v) for v in x])
        for i, (x, y) in enumerate(zip(diabetes["X"], diabetes["y"]))
    ]
    schema = (
        "id int, y double, " + ", ".join(f"`{n}` double" for n in names) + ", arr array<double>"
    )
    return spark.createDataFrame(rows, schema).cache()


def _check_regression(rows, diabetes, col="prediction"):
    pred = np.array(diabetes["pred"])
    assert len(rows) == len(pred)
    got = sorted((r["id"], r[col]) for r in rows)
    _close([p for _, p in got], pred)


def test_torch_model_regression_from_vector_assembler_and_array(spark, mlp, diabetes, tabular):
    assembled = VectorAssembler(inputCols=diabetes["feature_names"], outputCol="features")
    model = TorchModel(modelPath=mlp, batchSize=128)
    for df in (assembled.transform(tabular), tabular.withColumn("features", F.col("arr"))):
        out = model.transform(df)
        assert out.schema["prediction"].dataType == T.DoubleType()
        _check_regression(out.select("id", "prediction").collect(), diabetes)
        rmse = RegressionEvaluator(labelCol="y", predictionCol="prediction").evaluate(out)
        assert rmse == pytest.approx(diabetes["rmse"], abs=1e-4)


def test_torch_model_params_round_trip(spark, mlp, tmp_path):
    m = TorchModel(modelPath=mlp, inputCols=["features=arr"], outputCols=["prediction=yhat"])
    m.write().overwrite().save(str(tmp_path / "m"))
    back = TorchModel.load(str(tmp_path / "m"))
    assert back.getInputCols() == ["features=arr"] and back.getOutputCols() == ["prediction=yhat"]
    # The saved stage carries its model (embedModel, docs/saved-pipelines.md): the loaded one
    # reads the copy in its own folder.
    assert back.getModelPath() == str(tmp_path / "m" / "model" / Path(mlp).name)
    assert back.getBatchSize() == 0  # the default: auto


def test_torch_model_renames_inputs_and_outputs(spark, mlp, diabetes, tabular):
    out = TorchModel(
        modelPath=mlp, inputCols=["features=arr"], outputCols=["prediction=yhat"]
    ).transform(tabular)
    assert "prediction" not in out.columns
    _check_regression(out.select("id", "yhat").collect(), diabetes, "yhat")


def test_native_model_predict_regression_from_every_arrow_layout(mlp, diabetes):
    x = np.array(diabetes["X"])
    flat = pa.array(x.ravel())
    layouts = {
        "list<double>": pa.array(x.tolist(), pa.list_(pa.float64())),
        "fixed_size_list<float>": pa.FixedSizeListArray.from_arrays(
            pa.array(x.ravel(), pa.float32()), 10
        ),
        "fixed_shape_tensor": pa.ExtensionArray.from_storage(
            pa.fixed_shape_tensor(pa.float64(), [10]),
            pa.FixedSizeListArray.from_arrays(flat, 10),
        ),
    }
    m = NativeModel(mlp)
    assert m.output_schema() == torchspark.describe(mlp)
    for name, col in layouts.items():
        out = m.predict(pa.table({"features": col}), batch_size=100)
        assert out.schema.field("prediction").type == pa.float64(), name
        assert out.column("error").null_count == len(x), name
        _close(out.column("prediction").to_numpy(), diabetes["pred"])
    # Ten scalar columns gathered into the one input, named per call.
    names = diabetes["feature_names"]
    scalars = pa.table({n: x[:, i] for i, n in enumerate(names)})
    out = m.predict(scalars, columns={"features": names})
    _close(out.column("prediction").to_numpy(), diabetes["pred"])


def test_describe_lists_outputs_and_inputs_without_a_model(general, tmp_path):
    schema = torchspark.describe(general / "seg.json")
    assert schema.names == ["classes", "mask", "error"]
    assert schema.field("classes").type == pa.list_(pa.list_(pa.int32()))
    assert schema.field("mask").type == pa.binary()
    inputs = json.loads(schema.metadata[b"torchspark.inputs"])
    assert [(i["name"], i["kind"], i["columns"]) for i in inputs] == [("image", "image", ["image"])]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spec_version": 2, "inputs": [], "outputs": [], "oops": 1}))
    with pytest.raises(torchspark.ModelSpecError, match="oops"):
        torchspark.describe(bad)


def test_predict_arrow_regression_in_map_in_arrow(spark, mlp, diabetes, tabular):
    df = tabular.select("id", F.col("arr").alias("features"))
    fn, schema = predict_arrow(mlp, keep=["id"], input_schema=df.schema, batch_size=100)
    assert schema.simpleString() == "struct<id:int,prediction:double>"
    _check_regression(df.mapInArrow(fn, schema).collect(), diabetes)


def test_sql_function_returns_a_struct_of_outputs(spark, mlp, diabetes, tabular):
    torchspark.register_udfs(spark, "diabetes_mlp", mlp)
    tabular.select("id", F.col("arr").alias("features")).createOrReplaceTempView("diabetes")
    rows = spark.sql("SELECT id, diabetes_mlp(features) AS s FROM diabetes").collect()
    assert all(r.s.error is None for r in rows)
    _check_regression([{"id": r.id, "prediction": r.s.prediction} for r in rows], diabetes)


# ---- bad rows ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_short_row(spark, diabetes):
    """Five rows in one partition; row 3 has 9 values instead of 10."""
    rows = [(i, [float(v) for v in x]) for i, x in enumerate(diabetes["X"][:5])]
    rows[3] = (3, rows[3][1][:9])
    return spark.createDataFrame(rows, "id int, features array<double>").coalesce(1)


def _with_mode(surface, df, model, mode):
    if surface == "TorchModel":
        return TorchModel(modelPath=model, handleInvalid=mode).transform(df)
    fn, schema = predict_arrow(model, keep=["id"], input_schema=df.schema, handle_invalid=mode)
    return df.mapInArrow(fn, schema)


@pytest.mark.parametrize("surface", ["TorchModel", "mapInArrow"])
def test_wrong_length_row_fails_naming_row_input_column_and_shapes(mlp, with_short_row, surface):
    with pytest.raises(torchspark.TorchSparkError, match=WRONG_LENGTH) as e:
        _with_mode(surface, with_short_row, mlp, "error").collect()
    assert "row 3" in str(e.value)
    if surface == "mapInArrow":
        assert isinstance(e.value, InputError)


@pytest.mark.parametrize("surface", ["TorchModel", "mapInArrow"])
@pytest.mark.parametrize("mode", ["keep", "skip"])
def test_wrong_length_row_kept_or_skipped(mlp, diabetes, with_short_row, surface, mode):
    rows = {r.id: r for r in _with_mode(surface, with_short_row, mlp, mode).collect()}
    assert sorted(rows) == ([0, 1, 2, 3, 4] if mode == "keep" else [0, 1, 2, 4])
    for i in (0, 1, 2, 4):
        assert abs(rows[i].prediction - diabetes["pred"][i]) <= 1e-5
    if mode == "keep":
        assert all(rows[i].error is None for i in (0, 1, 2, 4))
        assert rows[3].prediction is None
        assert "row 3" in rows[3].error and re.search(WRONG_LENGTH, rows[3].error), rows[3].error


def test_wrong_length_row_in_native_model_is_a_row_error(mlp):
    table = pa.table({"features": [[1.0] * 10, [1.0] * 9]})
    out = NativeModel(mlp).predict(table, row_offset=40).to_pydict()
    assert out["prediction"][0] is not None and out["prediction"][1] is None
    assert out["error"][0] is None
    assert "row 41" in out["error"][1] and re.search(WRONG_LENGTH, out["error"][1])


# ---- the image proofs on every surface ----------------------------------------------------------

SURFACES = ["TorchModel", "mapInArrow", "SQL", "NativeModel"]


def _plain(v):
    """Spark Rows and ML Vectors as plain Python values."""
    if hasattr(v, "asDict"):
        return {k: _plain(x) for k, x in v.asDict().items()}
    if hasattr(v, "toArray"):
        return v.toArray().tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _run(surface, spark, df, model, keep):
    """`model` over `df` on one surface: a dict per row, the `keep` columns and the outputs."""
    schema = torchspark.describe(model)
    outputs = schema.names[:-1]
    if surface == "TorchModel":
        out = TorchModel(modelPath=model, batchSize=8).transform(df).select(*keep, *outputs)
    elif surface == "mapInArrow":
        fn, out_schema = predict_arrow(model, keep=keep, input_schema=df.schema, batch_size=8)
        out = df.mapInArrow(fn, out_schema)
    elif surface == "SQL":
        inputs = json.loads(schema.metadata[b"torchspark.inputs"])
        args = ", ".join(i["columns"][0] for i in inputs if i["kind"] != "mask")
        name = "proof_" + model.rsplit("/", 1)[-1].replace(".", "_")
        torchspark.register_udfs(spark, name, model)
        df.createOrReplaceTempView(f"{name}_rows")
        out = spark.sql(f"SELECT {', '.join(keep)}, {name}({args}) AS s FROM {name}_rows").select(
            *keep, *(F.col(f"s.{o}").alias(o) for o in outputs)
        )
    else:
        rows = df.collect()
        table = pa.table({c: [r[c] for r in rows] for c in df.columns})
        out = NativeModel(model).predict(table, batch_size=8).to_pylist()
        return [{**{k: r[k] for k in keep}, **o} for r, o in zip(rows, out)]
    return [_plain(r) for r in out.collect()]


@pytest.fixture(scope="module")
def seg(general) -> dict:
    return json.loads((general / "seg_expected.json").read_text())


def _images(spark, folder):
    """binaryFile rows with the file name in `name` and the bytes in `image`, one partition."""
    return (
        spark.read.format("binaryFile")
        .load(str(folder))
        .select(
            F.element_at(F.split("path", "/"), -1).alias("name"), F.col("content").alias("image")
        )
        .coalesce(1)
    )


def _check_classes(name, classes, png, seg):
    from PIL import Image

    i = seg["files"].index(name)
    expected = np.array(seg["classes"][i])
    got = np.array(classes)
    assert got.shape == expected.shape, name
    ambiguous = np.zeros(expected.shape, bool)
    for y, x in seg["ambiguous"][i]:
        ambiguous[y, x] = True
    assert np.array_equal(got[~ambiguous], expected[~ambiguous]), name
    decoded = np.array(Image.open(io.BytesIO(png)))
    assert decoded.shape == got.shape and np.array_equal(decoded, got), name


@pytest.mark.parametrize("surface", SURFACES)
def test_segmentation_class_maps_and_png_masks(spark, general, seg, surface):
    rows = _run(surface, spark, _images(spark, general / "seg"), str(general / "seg.pt"), ["name"])
    assert sorted(r["name"] for r in rows) == sorted(seg["files"])
    for r in rows:
        assert r.get("error") is None
        _check_classes(r["name"], r["classes"], r["mask"], seg)


def test_segmentation_and_detection_column_types(spark, general):
    df = _images(spark, general / "seg")
    seg = TorchModel(modelPath=str(general / "seg.pt")).transform(df).schema
    assert seg["classes"].dataType == T.ArrayType(T.ArrayType(T.IntegerType()))
    assert seg["mask"].dataType == T.BinaryType()
    det = TorchModel(modelPath=str(general / "det.pt")).transform(df).schema
    box = det["detections"].dataType.elementType
    assert [f.name for f in box.fields] == ["box", "label", "score"]
    assert box["box"].dataType == T.ArrayType(T.FloatType())
    assert box["label"].dataType == T.LongType() and box["score"].dataType == T.FloatType()


@pytest.fixture(scope="module")
def det(general) -> dict:
    return json.loads((general / "det_expected.json").read_text())


@pytest.mark.parametrize("surface", SURFACES)
def test_detection_array_of_structs_with_three_image_sizes(spark, general, det, surface):
    from PIL import Image

    assert len({Image.open(general / "det" / f).size for f in det["files"]}) == 3
    df = _images(spark, general / "det")  # one partition: the three sizes in one batch
    rows = _run(surface, spark, df, str(general / "det.pt"), ["name"])
    assert sorted(r["name"] for r in rows) == sorted(det["files"])
    for r in rows:
        i = det["files"].index(r["name"])
        expected, (h, w) = det["detections"][i], det["sizes"][i]
        assert len(r["detections"]) == len(expected), r["name"]
        for found, e in zip(r["detections"], expected):
            assert found["label"] == e["label"], r["name"]
            # In units of the image's size: pixel corners near 160 are float32 values 1.5e-5
            # apart, and a task's batch or thread count rounds the convolutions differently.
            _close(found["box"], e["box"], scale=np.array([w, h, w, h]))
            _close(found["score"], e["score"])


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("file", ["two_io.pt", "two_io_aoti.pt2"])
def test_two_inputs_two_outputs_from_one_forward(spark, general, file, surface):
    e = json.loads((general / "two_io_expected.json").read_text())
    rows = [
        (f, (general / "two_io" / f).read_bytes(), [float(v) for v in m])
        for f, m in zip(e["files"], e["meta"])
    ]
    df = spark.createDataFrame(rows, "name string, image binary, meta array<double>")
    out = {r["name"]: r for r in _run(surface, spark, df, str(general / file), ["name"])}
    assert sorted(out) == sorted(e["files"])
    for i, f in enumerate(e["files"]):
        _close(out[f]["probability"], e["probability"][i])
        _close(out[f]["embedding"], e["embedding"][i])


def test_two_io_column_types(spark, general):
    from pyspark.ml.linalg import VectorUDT

    model = str(general / "two_io.pt")
    df = spark.createDataFrame([], "name string, image binary, meta array<double>")
    jvm = TorchModel(modelPath=model).transform(df).schema
    assert isinstance(jvm["probability"].dataType, VectorUDT)
    assert jvm["embedding"].dataType == T.ArrayType(T.FloatType())
    _, python = predict_arrow(model, keep=["name"], input_schema=df.schema)
    assert python.simpleString() == (
        "struct<name:string,probability:array<double>,embedding:array<float>>"
    )


def test_torchvision_imports_after_a_model_loaded(general):
    """torchspark registers torchvision::nms when missing as a TorchScript model loads; a later
    `import torchvision` in the same worker must not abort on a second registration (torchspark
    loads torchvision's ops first)."""
    pytest.importorskip("torchvision")
    code = (
        "from torchspark import NativeModel\n"
        f"NativeModel({str(general / 'diabetes_mlp.pt')!r})\n"
        "import torch, torchvision\n"
        "print(torch.ops.torchvision.nms.default.name())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "torchvision::nms"


def test_an_error_raised_inside_the_model_names_torchs_reason(tmp_path):
    import torch

    class Lookup(torch.nn.Module):
        """An embedding lookup: an id outside the table makes the model itself raise."""

        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(20, 3)

        def forward(self, ids):
            return self.table(ids).sum(1)

    path = tmp_path / "lookup.pt"
    torch.jit.script(Lookup()).save(str(path))
    spec = {
        "spec_version": 2,
        "inputs": [{"name": "ids", "dtype": "int64", "shape": [2]}],
        "outputs": [{"name": "v", "shape": [3]}],
    }
    path.with_suffix(".json").write_text(json.dumps(spec))
    model = NativeModel(str(path), num_threads=1)
    good = pa.RecordBatch.from_arrays([pa.array([[1, 2], [3, 4]], pa.list_(pa.int64()))], ["ids"])
    assert model.predict(good).column("error").null_count == 2
    bad = pa.RecordBatch.from_arrays([pa.array([[1, 2], [3, 50]], pa.list_(pa.int64()))], ["ids"])
    with pytest.raises(torchspark.InferenceError) as info:
        model.predict(bad)
    # The exception line of TorchScript's interpreter, not its "operation failed" header.
    assert "RuntimeError: index out of range in self" in str(info.value), str(info.value)
    assert str(path) in str(info.value)
