"""Maven coordinates (docs/install-maven.md): `make dist`'s dist/maven is what `mvn deploy` to a
file:// repository writes (POM flattened, sources and ScalaDoc jars, checksums), and a PySpark
session that names only the coordinates and that repository (spark.jars.packages) gets the jar
and scores images like PyTorch. Runs on pyspark 4.1 (.venv) and 3.5 (.venv-spark35, make
test-spark35): each resolves its own line's artifact. spark-submit --packages on the standalone
cluster: clusters/test_standalone.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from maven_dist import (
    ARTIFACT,
    COORDINATES,
    MISSING,
    SHIPPED_JAR,
    VERSION_DIR,
    isolated_ivy,
    repo_url,
    resolved,
    resolved_jar,
)

from conftest import tol
from torchspark import __version__

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
NS = {"m": "http://maven.apache.org/POM/4.0.0"}
STEM = f"{ARTIFACT}-{__version__}"


def _digest(path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def test_dist_repository_is_laid_out_as_mvn_deploy_writes_it():
    files = {p.name for p in VERSION_DIR.iterdir()}
    for name in (f"{STEM}.jar", f"{STEM}.pom", f"{STEM}-sources.jar", f"{STEM}-javadoc.jar"):
        for suffix in ("", ".md5", ".sha1", ".sha256", ".sha512"):
            assert name + suffix in files, (name + suffix, sorted(files))
    meta = VERSION_DIR.parent / "maven-metadata.xml"
    root = ET.parse(meta).getroot()
    assert root.findtext("groupId") == "dev.torchspark"
    assert root.findtext("artifactId") == ARTIFACT
    assert __version__ in [v.text for v in root.iter("version")]
    # Every checksum is the file's: what Maven, Ivy and sbt verify on download.
    for f in [*VERSION_DIR.iterdir(), meta]:
        for algorithm in ("md5", "sha1", "sha256", "sha512"):
            if f.suffix.lstrip(".") in ("md5", "sha1", "sha256", "sha512"):
                continue
            got = (f.parent / f"{f.name}.{algorithm}").read_text().split()[0]
            assert got == _digest(f, algorithm), f"{f.name}.{algorithm}"
    # The jar in the repository is the one make dist ships (its .so with RUNPATH $ORIGIN).
    assert _digest(VERSION_DIR / f"{STEM}.jar", "sha256") == _digest(SHIPPED_JAR, "sha256")


def test_flattened_pom_names_the_line_and_keeps_spark_provided():
    text = (VERSION_DIR / f"{STEM}.pom").read_text()
    assert "${" not in text  # no ${revision}, no profile property left for a consumer to fill
    pom = ET.fromstring(text)
    assert pom.findtext("m:groupId", namespaces=NS) == "dev.torchspark"
    assert pom.findtext("m:artifactId", namespaces=NS) == ARTIFACT
    assert pom.findtext("m:version", namespaces=NS) == __version__
    assert pom.find("m:profiles", NS) is None and pom.find("m:build", NS) is None
    assert pom.find("m:licenses/m:license/m:name", NS).text == "Apache-2.0"
    deps = {
        d.findtext("m:artifactId", namespaces=NS): d.findtext("m:scope", namespaces=NS)
        for d in pom.iterfind("m:dependencies/m:dependency", NS)
    }
    scala = ARTIFACT.rsplit("_", 1)[1]
    # Spark, Scala and the logging API Spark ships come from the cluster; nothing else is needed
    # (no test dependency either).
    assert deps == {
        "scala-library": "provided",
        f"spark-sql_{scala}": "provided",
        f"spark-mllib_{scala}": "provided",
        "slf4j-api": "provided",
    }


def test_sources_and_api_docs_jars_cover_the_public_classes():
    with zipfile.ZipFile(VERSION_DIR / f"{STEM}-sources.jar") as z:
        names = set(z.namelist())
    assert {"dev/torchspark/ImageScorer.scala", "dev/torchspark/SparkLineCheck.java"} <= names
    assert "dev/torchspark/SparkLine.java" in names  # generated per line, shipped as compiled
    with zipfile.ZipFile(VERSION_DIR / f"{STEM}-javadoc.jar") as z:
        names = set(z.namelist())
    assert "index.html" in names
    assert any(n.startswith("dev/torchspark/ImageScorer") and n.endswith(".html") for n in names)


def test_spark_jars_packages_from_a_pyspark_session_scores_images(fixtures, expected, tmp_path):
    ivy = isolated_ivy(tmp_path)
    code = f"""
import json, sys
from pyspark.sql import SparkSession
import torchspark
b = (SparkSession.builder.master("local[2]")
     .config("spark.jars.packages", {COORDINATES!r})
     .config("spark.jars.repositories", {repo_url()!r})
     .config("spark.ui.enabled", "false"))
for k, v in {ivy!r}.items():
    b = b.config(k, v)
spark = b.getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.format("binaryFile").load({str(fixtures / "images")!r})
out = torchspark.ImageScorer(modelPath={str(fixtures / "resnet20.pt")!r}, inputCol="content")
rows = out.transform(df).select("path", "prediction", "probability").collect()
print("ROWS " + json.dumps([[r.path, r.prediction, r.probability.toArray().tolist()]
                            for r in rows]))
spark.stop()
"""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "TORCHSPARK_PYTHON": sys.executable}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, p.stderr[-4000:]
    # torchspark from the dist repository (Ivy's first and only extra resolver), and nothing
    # else: Spark and Scala are provided, torchspark has no other dependency.
    assert resolved(p.stderr) == [(COORDINATES, "repo-1")], p.stderr[-4000:]
    assert _digest(resolved_jar(ivy["spark.jars.ivy"]), "sha256") == _digest(SHIPPED_JAR, "sha256")
    (line,) = [ln for ln in p.stdout.splitlines() if ln.startswith("ROWS ")]
    rows = json.loads(line[5:])
    assert len(rows) == len(expected)
    for path, prediction, probability in rows:
        name = path.rsplit("/", 1)[-1]
        e = np.array(expected[name]["resnet20"]["probability"])
        assert np.abs(np.array(probability) - e).max() <= tol(name), name
        assert prediction == float(e.argmax()), name
