"""Any tensor model (spec version 2) on every Python-facing surface: TorchModel (JVM) from
PySpark, NativeModel.predict, predict_arrow in mapInArrow and the SQL function, each against
PyTorch's outputs on the four proof models (regression, segmentation, detection, two inputs and
two outputs); bad rows named in error, skipped or kept."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F
from pyspark.sql import types as T

import torchspark
from torchspark import InputError, NativeModel, TorchModel, predict_arrow

# A wrong-length row's reason, as every surface reports it: the row, the input, the column, the
# declared and the actual number of values.
WRONG_LENGTH = r"row \d+: input `features` \(column `?features`?\): .*\b10\b.*\b9\b"


def _close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=atol)


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
    assert back.getModelPath() == mlp and back.getBatchSize() == 64


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


def test_wrong_length_row_fails_naming_row_input_column_and_shapes(spark, mlp, with_short_row):
    with pytest.raises(Exception, match=WRONG_LENGTH) as e:
        TorchModel(modelPath=mlp).transform(with_short_row).collect()
    assert "row 3" in str(e.value)
    fn, schema = predict_arrow(mlp, keep=["id"], input_schema=with_short_row.schema)
    with pytest.raises(InputError, match=WRONG_LENGTH) as e:
        with_short_row.mapInArrow(fn, schema).collect()
    assert "row 3" in str(e.value)


def test_wrong_length_row_kept_or_skipped(spark, mlp, diabetes, with_short_row):
    pred = diabetes["pred"]
    for surface in ("jvm", "python"):
        for mode in ("keep", "skip"):
            if surface == "jvm":
                df = TorchModel(modelPath=mlp, handleInvalid=mode).transform(with_short_row)
            else:
                fn, schema = predict_arrow(
                    mlp, keep=["id"], input_schema=with_short_row.schema, handle_invalid=mode
                )
                df = with_short_row.mapInArrow(fn, schema)
            rows = {r.id: r for r in df.collect()}
            assert sorted(rows) == ([0, 1, 2, 3, 4] if mode == "keep" else [0, 1, 2, 4]), surface
            for i in (0, 1, 2, 4):
                assert abs(rows[i].prediction - pred[i]) <= 1e-5
                if mode == "keep":
                    assert rows[i].error is None
            if mode == "keep":
                assert rows[3].prediction is None
                assert "row 3" in rows[3].error, rows[3].error
                assert re.search(WRONG_LENGTH, rows[3].error), rows[3].error
    out = (
        NativeModel(mlp)
        .predict(pa.table({"features": [[1.0] * 10, [1.0] * 9]}), row_offset=40)
        .to_pydict()
    )
    assert out["prediction"][0] is not None and out["prediction"][1] is None
    assert out["error"][0] is None and "row 41" in out["error"][1]


# ---- segmentation: per-pixel classes and the PNG mask -----------------------------------------


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
    if png is not None:
        decoded = np.array(Image.open(io.BytesIO(png)))
        assert decoded.shape == got.shape and np.array_equal(decoded, got), name


def test_segmentation_class_maps_and_png_masks_on_every_surface(spark, general, seg):
    model = str(general / "seg.pt")
    df = _images(spark, general / "seg")
    results = {
        "jvm": TorchModel(modelPath=model).transform(df).select("name", "classes", "mask"),
        "mapInArrow": df.mapInArrow(*predict_arrow(model, keep=["name"], input_schema=df.schema)),
    }
    torchspark.register_udfs(spark, "segment", model)
    df.createOrReplaceTempView("seg_images")
    results["sql"] = spark.sql(
        "SELECT name, s.classes AS classes, s.mask AS mask "
        "FROM (SELECT name, segment(image) AS s FROM seg_images)"
    )
    for surface, out in results.items():
        rows = out.collect()
        assert sorted(r.name for r in rows) == sorted(seg["files"]), surface
        for r in rows:
            _check_classes(r.name, r.classes, r.mask, seg)
    files = seg["files"]
    batch = pa.table({"image": [(general / "seg" / f).read_bytes() for f in files]})
    out = NativeModel(model).predict(batch, batch_size=4).to_pydict()
    for f, c, m in zip(files, out["classes"], out["mask"]):
        _check_classes(f, c, m, seg)


# ---- detection: variable-length boxes per image, three sizes in one partition ------------------


@pytest.fixture(scope="module")
def det(general) -> dict:
    return json.loads((general / "det_expected.json").read_text())


def _check_detections(name, found, det):
    expected = det["detections"][det["files"].index(name)]
    assert len(found) == len(expected), name
    for f, e in zip(found, expected):
        assert f["label"] == e["label"], name
        _close(f["box"], e["box"])
        _close(f["score"], e["score"])


def test_detection_array_of_structs_with_three_image_sizes(spark, general, det):
    from PIL import Image

    sizes = {Image.open(general / "det" / f).size for f in det["files"]}
    assert len(sizes) == 3
    model = str(general / "det.pt")
    df = _images(spark, general / "det")
    out = TorchModel(modelPath=model, batchSize=8).transform(df)
    box = out.schema["detections"].dataType.elementType
    assert [f.name for f in box.fields] == ["box", "label", "score"]
    assert box["box"].dataType == T.ArrayType(T.FloatType())
    assert box["label"].dataType == T.LongType() and box["score"].dataType == T.FloatType()
    python = df.mapInArrow(*predict_arrow(model, keep=["name"], input_schema=df.schema))
    for rows in (out.select("name", "detections").collect(), python.collect()):
        assert sorted(r.name for r in rows) == sorted(det["files"])
        for r in rows:
            _check_detections(r.name, [d.asDict() for d in r.detections], det)
    batch = pa.table({"image": [(general / "det" / f).read_bytes() for f in det["files"]]})
    out = NativeModel(model).predict(batch, batch_size=8).to_pydict()
    for f, found in zip(det["files"], out["detections"]):
        _check_detections(f, found, det)


# ---- two inputs, two outputs, one forward pass --------------------------------------------------


@pytest.mark.parametrize("file", ["two_io.pt", "two_io_aoti.pt2"])
def test_two_inputs_two_outputs_from_one_forward(spark, general, file):
    from pyspark.ml.linalg import VectorUDT

    e = json.loads((general / "two_io_expected.json").read_text())
    rows = [
        (f, (general / "two_io" / f).read_bytes(), [float(v) for v in m])
        for f, m in zip(e["files"], e["meta"])
    ]
    df = spark.createDataFrame(rows, "name string, image binary, meta array<double>")
    model = str(general / file)
    out = TorchModel(modelPath=model).transform(df)
    assert isinstance(out.schema["probability"].dataType, VectorUDT)
    assert out.schema["embedding"].dataType == T.ArrayType(T.FloatType())
    jvm = {r.name: (r.probability.toArray(), r.embedding) for r in out.collect()}
    fn, schema = predict_arrow(model, keep=["name"], input_schema=df.schema)
    assert schema["probability"].dataType == T.ArrayType(T.DoubleType())
    python = {r.name: (r.probability, r.embedding) for r in df.mapInArrow(fn, schema).collect()}
    batch = pa.table(
        {
            "image": [r[1] for r in rows],
            "meta": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
        }
    )
    native = NativeModel(model).predict(batch).to_pydict()
    local = {f: (p, m) for f, p, m in zip(e["files"], native["probability"], native["embedding"])}
    for i, f in enumerate(e["files"]):
        for got in (jvm, python, local):
            _close(got[f][0], e["probability"][i])
            _close(got[f][1], e["embedding"][i])
