"""`make dist`'s Maven repository (dist/maven, tools/maven_repo.py) and an Ivy set-up that sees
nothing else, for the tests that get torchspark by its coordinates: test_maven.py (a PySpark
session with spark.jars.packages) and clusters/test_standalone.py (spark-submit --packages)."""

from __future__ import annotations

import re
from pathlib import Path

import pyspark

from torchspark import __version__
from torchspark.session import SPARK_LINES

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "dist" / "maven"
LINE = ".".join(pyspark.__version__.split(".")[:2])
ARTIFACT = f"torchspark-spark{LINE}_{SPARK_LINES[LINE]}"
COORDINATES = f"dev.torchspark:{ARTIFACT}:{__version__}"
# Where `mvn deploy` puts this line's files, and the jar that make dist ships (tools/dist.py).
VERSION_DIR = REPO / "dev" / "torchspark" / ARTIFACT / __version__
SHIPPED_JAR = ROOT / "dist" / f"{ARTIFACT}-{__version__}.jar"
MISSING = None if (VERSION_DIR / f"{ARTIFACT}-{__version__}.pom").is_file() else "run `make dist`"

# Nothing but the repositories that a test names (--repositories, spark.jars.repositories): the
# default resolver is an empty chain. Without this file Spark's chain would start with ~/.m2
# (where `mvn install` puts torchspark), then ~/.ivy2, Maven Central and spark-packages.
IVY_SETTINGS = """<ivysettings>
  <settings defaultResolver="nothing-else"/>
  <resolvers><chain name="nothing-else"/></resolvers>
</ivysettings>
"""


def isolated_ivy(work: Path) -> dict[str, str]:
    """Spark settings: Ivy's home (its cache and the resolved jars) under `work`, and the
    settings above; nothing is read from or written to ~/.m2 or ~/.ivy2, nothing downloaded."""
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "ivysettings.xml"
    settings.write_text(IVY_SETTINGS)
    return {"spark.jars.ivy": str(work / "ivy"), "spark.jars.ivySettings": str(settings)}


def repo_url() -> str:
    return REPO.as_uri()


def resolved(output: str) -> list[tuple[str, str]]:
    """Ivy's `found group#artifact;version in resolver` lines: (group:artifact:version, resolver)."""
    found = re.findall(r"found (\S+)#(\S+);(\S+) in (\S+)", output)
    return [(f"{g}:{a}:{v}", r) for g, a, v, r in found]


def resolved_jar(ivy_home: str) -> Path:
    """The jar Spark put on the classpath: Ivy copies what it resolved to <ivy home>/jars."""
    return Path(ivy_home) / "jars" / f"dev.torchspark_{ARTIFACT}-{__version__}.jar"
