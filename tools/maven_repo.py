"""`make dist`'s Maven repository: dist/maven, laid out as `mvn deploy` to a file:// repository
writes it, for `spark-submit --packages dev.torchspark:torchspark-spark4.1_2.13:<version>
--repositories file://<checkout>/dist/maven`, spark.jars.packages, Maven and sbt
(docs/install-maven.md).

Per Spark line: the jar that make dist ships (dist/<artifact>-<version>.jar, tools/dist.py: its
.so has RUNPATH $ORIGIN), with the flattened POM and the sources and ScalaDoc jars that
`mvn -Prelease package` left in jvm-shim/target, goes through `mvn deploy:deploy-file`, so that
Maven itself writes the layout, maven-metadata.xml and the .md5/.sha1 files. Then .sha256 and
.sha512 beside every file (Maven 3.8's resolver writes only the first two). Maven runs with its
own local repository, jvm-shim/target/deploy-repo (the deploy plugin, fetched once, and the
resolver's bookkeeping of the `dist` repository): nothing is read from or written to ~/.m2.

Usage: python tools/maven_repo.py --jar dist/torchspark-spark4.1_2.13-0.1.0.jar [--jar ...]
       --out dist/maven [--mvn "mvn -B -ntp"]
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each line's build leaves its files: target/ (4.1) or a line's build.dir below it.
BUILDS = ROOT / "jvm-shim" / "target"
DEPLOY = "org.apache.maven.plugins:maven-deploy-plugin:3.1.4:deploy-file"
LOCAL_REPO = BUILDS / "deploy-repo"
GROUP = "dev.torchspark"
CHECKSUMS = ("md5", "sha1", "sha256", "sha512")
POM = "{http://maven.apache.org/POM/4.0.0}"


def built(name: str) -> Path:
    """The one `name` that a line's Maven build wrote (jvm-shim/target or one level below)."""
    found = [*BUILDS.glob(name), *BUILDS.glob(f"*/{name}")]
    if len(found) != 1:
        where = ", ".join(map(str, found)) or "nowhere"
        raise SystemExit(
            f"{name}: expected once under {BUILDS}, found {where}: run the line's "
            "`mvn -Prelease -DskipTests package` first (make dist does)"
        )
    return found[0]


def coordinates(pom: Path) -> tuple[str, str, str]:
    """(group, artifact, version) of a flattened POM, refusing one with unresolved properties."""
    text = pom.read_text()
    if "${" in text:
        raise SystemExit(f"{pom}: not flattened (it still holds a ${{...}} property)")
    root = ET.fromstring(text)
    return tuple(root.findtext(f"{POM}{k}") or "" for k in ("groupId", "artifactId", "version"))  # type: ignore[return-value]


def deploy(mvn: list[str], jar: Path, out: Path) -> Path:
    stem = jar.name.removesuffix(".jar")
    pom = built(f"{stem}.pom")
    group, artifact, version = coordinates(pom)
    if group != GROUP or f"{artifact}-{version}" != stem:
        raise SystemExit(f"{pom} is {group}:{artifact}:{version}, not {GROUP}'s {stem}")
    cmd = [
        *mvn,
        DEPLOY,
        f"-Dfile={jar.resolve()}",
        f"-DpomFile={pom}",
        f"-Dsources={built(f'{stem}-sources.jar')}",
        f"-Djavadoc={built(f'{stem}-javadoc.jar')}",
        f"-Durl={out.resolve().as_uri()}",
        "-DrepositoryId=dist",
        f"-Dmaven.repo.local={LOCAL_REPO}",
    ]
    # Outside any project: deploy-file needs none, and must not pick up a pom.xml by accident.
    with tempfile.TemporaryDirectory() as cwd:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return out / GROUP.replace(".", "/") / artifact / version


def add_checksums(out: Path) -> None:
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.suffix.lstrip(".") not in CHECKSUMS:
            for algorithm in CHECKSUMS[2:]:
                digest = hashlib.new(algorithm, f.read_bytes()).hexdigest()
                (f.parent / f"{f.name}.{algorithm}").write_text(digest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jar", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "dist" / "maven")
    ap.add_argument("--mvn", default="mvn -B -ntp -q")
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    dirs = [deploy(shlex.split(a.mvn), jar, a.out) for jar in a.jar]
    add_checksums(a.out)
    for d, jar in zip(dirs, a.jar):
        deployed = d / jar.name
        if deployed.read_bytes() != jar.read_bytes():
            raise SystemExit(f"{deployed} differs from the shipped {jar}")
        print(f"maven: {GROUP}:{d.parent.name}:{d.name} in {a.out.resolve().as_uri()}")


if __name__ == "__main__":
    main()
