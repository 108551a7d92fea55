"""One source tree, two Spark lines: the jar that matches the running pyspark (and
`torchspark.configure(builder)`, which adds it, and refuses what cannot work), a wrong-line jar
refused by name at first use and named in the log when a session starts, TorchModel's regression
proof and TextEmbedder's embeddings. Runs on pyspark 4.1 (.venv) and 3.5 (.venv-spark35)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pyspark
import pytest
from pyspark.sql import SparkSession

import torchspark
from conftest import FIXTURES
from torchspark import __version__
from torchspark.session import SPARK_LINES

LINE = ".".join(pyspark.__version__.split(".")[:2])
OTHER = {"3.5": "4.1.0", "4.1": "3.5.9"}[LINE]
OTHER_LINE = OTHER[:3]
VERSION = torchspark.__version__
ARTIFACT = f"torchspark-spark{LINE}_{SPARK_LINES[LINE]}"
OTHER_ARTIFACT = f"torchspark-spark{OTHER_LINE}_{SPARK_LINES[OTHER_LINE]}"


def _child(code: str) -> str:
    """Runs `code` in a fresh interpreter; its output, once it exited 0 (a signal at exit would
    otherwise go unseen)."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_jar_path_is_the_running_pysparks_line(spark):
    jar = torchspark.jar_path()
    assert f"torchspark-spark{LINE}_{SPARK_LINES[LINE]}-" in jar
    assert spark.conf.get("spark.jars") == jar
    with zipfile.ZipFile(jar) as z:  # both lines carry the same native library
        assert "native/linux-x86_64/libtorchspark.so" in z.namelist()
    assert spark.sparkContext._jvm.dev.torchspark.TorchSpark.nativeModelLoads() >= 0


def test_spark_without_a_jar_is_named_with_both_lines():
    with pytest.raises(torchspark.ConfigError) as e:
        torchspark.jar_path("3.4.1")
    assert "3.4.1" in str(e.value)
    assert "Spark 3.5 (Scala 2.12) and Spark 4.1 (Scala 2.13)" in str(e.value)


def test_wrong_line_jar_is_refused_by_name_at_first_use(model):
    wrong = torchspark.jar_path(OTHER)
    code = f"""
import torchspark
s = torchspark.local_session("local[1]", **{{"spark.jars": {wrong!r}, "spark.ui.enabled": "false"}})
s.sparkContext.setLogLevel("OFF")
try:
    torchspark.ImageScorer(modelPath={model!r}, inputCol="content")
except Exception as e:
    print("REFUSED", e)
from pyspark.sql import SparkSession
try:
    torchspark.configure(SparkSession.builder)
except torchspark.ConfigError as e:
    print("CONFIGURE", e)
s.stop()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    # Its exit status too: a signal at exit would otherwise go unseen.
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    refused, _, configure = out.partition("CONFIGURE")
    assert "REFUSED" in refused
    assert wrong.rsplit("/", 1)[1] in refused  # the jar, by name
    assert f"but this is Spark {pyspark.__version__}" in refused
    assert f"use the torchspark-spark{LINE}_{SPARK_LINES[LINE]} jar" in refused
    coordinates = f"dev.torchspark:torchspark-spark{LINE}_{SPARK_LINES[LINE]}:{VERSION}"
    assert f"Maven coordinates {coordinates}" in refused
    assert "NoSuchMethodError" not in out
    # configure on the session that already runs with it: refused before any job, by name.
    assert f"the running SparkContext's spark.jars already holds {wrong}" in configure
    assert f"{ARTIFACT}-" in configure
    if LINE == "4.1":
        # Named at session start too, in the driver's log, before any torchspark call (Spark
        # 4.1 loads the jar's SessionStartCheck for PySpark sessions; 3.5 only for Scala ones).
        (logged,) = [ln for ln in p.stderr.splitlines() if "is built for Spark" in ln]
        assert "ERROR" in logged and coordinates in logged and wrong.rsplit("/", 1)[1] in logged


CONFIGURE_BUILDERS = """
import json, torchspark
from pyspark.sql import SparkSession
def opts(b):
    return dict(b._options)
mine = SparkSession.builder.master("local[1]").config("spark.jars", "/opt/libs/other.jar")
same = SparkSession.builder.config("spark.jars", "hdfs:///libs/" + {name!r})
print(json.dumps({{
    "beside": opts(torchspark.configure(mine)),
    "twice": opts(torchspark.configure(torchspark.configure(SparkSession.builder))),
    "same": opts(torchspark.configure(same)),
    "packages": opts(torchspark.configure(SparkSession.builder, packages=True)),
    "jar": torchspark.jar_path(),
}}))
"""


def test_configure_adds_this_lines_jar_once_beside_the_builders_own():
    # In a child: with a SparkContext running (this process's `spark`), configure adds nothing.
    out = json.loads(_child(CONFIGURE_BUILDERS.format(name=f"{ARTIFACT}-{VERSION}.jar")))
    jar = out["jar"]
    assert jar.endswith(f"/{ARTIFACT}-{VERSION}.jar")
    assert out["beside"]["spark.jars"] == f"/opt/libs/other.jar,{jar}"
    assert out["beside"]["spark.master"] == "local[1]"
    assert out["twice"]["spark.jars"] == jar
    # The same jar (line and version) from elsewhere, e.g. cluster storage, is kept alone.
    assert out["same"]["spark.jars"] == f"hdfs:///libs/{ARTIFACT}-{VERSION}.jar"
    assert out["packages"] == {"spark.jars.packages": f"dev.torchspark:{ARTIFACT}:{VERSION}"}


@pytest.mark.parametrize("spark_version", ["3.4.1", "4.0.0", "3.3.4", "5.0.0"])
def test_configure_refuses_a_spark_line_without_a_jar_and_names_the_fix(spark_version):
    for packages in (False, True):
        with pytest.raises(torchspark.ConfigError) as e:
            torchspark.configure(
                SparkSession.builder, spark_version=spark_version, packages=packages
            )
        msg = str(e.value)
        assert f"Spark {spark_version} has no torchspark jar" in msg
        assert "Spark 3.5 (Scala 2.12) and Spark 4.1 (Scala 2.13)" in msg
        assert "pip install 'pyspark==4.1.*' or 'pyspark==3.5.*'" in msg


@pytest.mark.parametrize(
    "key, entry",
    [
        ("spark.jars", f"hdfs:///libs/{OTHER_ARTIFACT}-{VERSION}.jar"),
        ("spark.jars", f"/opt/libs/{ARTIFACT}-0.0.9.jar"),
        ("spark.jars.packages", f"dev.torchspark:{OTHER_ARTIFACT}:{VERSION}"),
        ("spark.jars.packages", f"dev.torchspark:{ARTIFACT}:0.0.9"),
    ],
)
def test_configure_refuses_a_builder_holding_another_torchspark_jar(key, entry):
    builder = SparkSession.builder.config(key, entry)
    for packages in (False, True):
        with pytest.raises(torchspark.ConfigError) as e:
            torchspark.configure(builder, packages=packages)
        msg = str(e.value)
        assert f"the builder's {key} already holds {entry}" in msg
        assert f"(Spark {LINE}, Scala {SPARK_LINES[LINE]}, torchspark {VERSION})" in msg


def test_configure_refuses_pyspark_submit_args_holding_another_line(monkeypatch):
    jar = f"/opt/libs/{OTHER_ARTIFACT}-{VERSION}.jar"
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", f"--master local[1] --jars {jar} pyspark-shell")
    with pytest.raises(
        torchspark.ConfigError, match=f"PYSPARK_SUBMIT_ARGS --jars already holds {jar}"
    ):
        torchspark.configure(SparkSession.builder)


def test_configure_refuses_a_connect_client_naming_the_server_side_fix():
    with pytest.raises(torchspark.ConfigError) as e:
        torchspark.configure(SparkSession.builder.remote("sc://127.0.0.1:15002"))
    assert "Spark Connect client of sc://127.0.0.1:15002" in str(e.value)
    assert f"--packages dev.torchspark:{ARTIFACT}:{VERSION}" in str(e.value)


def test_configure_keeps_the_running_session_that_has_the_jar(spark):
    builder = torchspark.configure(SparkSession.builder)
    assert "spark.jars" not in builder._options  # read only when a SparkContext starts
    assert builder.getOrCreate() is spark


def test_configure_refuses_a_running_session_without_the_jar():
    code = """
import torchspark
from pyspark.sql import SparkSession
s = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
s.sparkContext.setLogLevel("OFF")
try:
    torchspark.configure(SparkSession.builder)
except torchspark.ConfigError as e:
    print("REFUSED", e)
s.stop()
"""
    out = _child(code)
    assert "REFUSED a SparkContext already runs in this process without the torchspark jar" in out
    assert f"spark.jars={torchspark.jar_path()}" in out  # what to configure instead


def test_wrong_line_jar_is_named_when_a_jvm_session_starts():
    # What a Scala or Java application does first, SparkSession.builder().getOrCreate() in the
    # driver JVM (here through py4j): Spark loads the jar's SessionStartCheck, which logs the
    # mismatch before any torchspark class is used (whose Scala classes could not even load).
    wrong = torchspark.jar_path(OTHER)
    code = f"""
from pyspark import SparkConf, SparkContext
conf = SparkConf().setMaster("local[1]").set("spark.jars", {wrong!r}).set("spark.ui.enabled", "false")
sc = SparkContext(conf=conf)
print("COUNT", sc._jvm.org.apache.spark.sql.SparkSession.builder().getOrCreate().range(3).count())
sc.stop()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "COUNT 3" in p.stdout  # a log line, not a failed session
    coordinates = f"dev.torchspark:torchspark-spark{LINE}_{SPARK_LINES[LINE]}:{__version__}"
    (logged,) = [ln for ln in p.stderr.splitlines() if "is built for Spark" in ln]
    assert "ERROR" in logged and "SessionStartCheck" in logged, logged
    assert wrong.rsplit("/", 1)[1] in logged  # what was found
    assert f"but this is Spark {pyspark.__version__}" in logged  # what runs
    assert f"Maven coordinates {coordinates}" in logged  # what fixes it


def test_torch_model_regression_on_this_line(spark, general, diabetes):
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.feature import VectorAssembler

    names = diabetes["feature_names"]
    rows = [
        (i, float(y), *map(float, x)) for i, (x, y) in enumerate(zip(diabetes["X"], diabetes["y"]))
    ]
    schema = "id int, y double, " + ", ".join(f"`{n}` double" for n in names)
    df = VectorAssembler(inputCols=names, outputCol="features").transform(
        spark.createDataFrame(rows, schema)
    )
    out = torchspark.TorchModel(modelPath=str(general / "diabetes_mlp.pt")).transform(df)
    got = sorted((r.id, r.prediction) for r in out.select("id", "prediction").collect())
    assert len(got) == len(diabetes["pred"])
    assert max(abs(p - e) for (_, p), e in zip(got, diabetes["pred"])) <= 1e-5
    rmse = RegressionEvaluator(labelCol="y", predictionCol="prediction").evaluate(out)
    assert rmse == pytest.approx(diabetes["rmse"], abs=1e-4)


def test_text_embedder_matches_sentence_transformers_on_this_line(spark):
    # The text fixtures come from .venv's PyTorch (make_text_fixtures.py; `make test` runs it).
    text = FIXTURES / "text"
    ref = json.loads((text / "text_expected.json").read_text())
    df = spark.createDataFrame(list(enumerate(ref["texts"])), "id int, text string")
    out = torchspark.TextEmbedder(modelPath=str(text / "minilm.pt"), batchSize=16).transform(df)
    # And in this line's Python workers (mapInArrow; the native tokenizer and model there).
    fn, schema = torchspark.embed_arrow(
        str(text / "minilm.pt"), keep=["id"], input_schema=df.schema, batch_size=16
    )
    for way, frame in (("TextEmbedder", out), ("embed_arrow", df.mapInArrow(fn, schema))):
        rows = sorted(frame.select("id", "embedding").collect())
        assert len(rows) == len(ref["texts"]), way
        diff = max(
            abs(g - e)
            for r, want in zip(rows, ref["embeddings"])
            for g, e in zip(r.embedding, want)
        )
        assert diff <= 1e-5, (way, diff)
