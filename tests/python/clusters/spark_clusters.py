"""Real clusters for the cluster tests, started from the venv's pyspark on 127.0.0.1.

- `Standalone`: a master and 2 workers (1 core each) through `bin/spark-class`.
- `Yarn`: MiniDFSCluster + MiniYARNCluster (tests/cluster, built by `make cluster-harness`).

Everything started here is stopped by pid (its process tree, found by ancestry); a cluster's
logs are copied to tests/cluster/logs/ when a test using it failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pyspark

ROOT = Path(__file__).resolve().parents[3]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
HARNESS = ROOT / "tests" / "cluster" / "target"
KEPT_LOGS = ROOT / "tests" / "cluster" / "logs"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def java_home() -> str:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if not java:
        raise RuntimeError("java not found on PATH")
    return str(Path(java).resolve().parent.parent)


def base_env(work: Path, spark_home: Path = SPARK_HOME, python: str = PY) -> dict[str, str]:
    """What every process we start sees: a venv's Python for drivers and workers, its Spark's
    own home, an empty Spark conf dir (no user settings leak in), 127.0.0.1."""
    conf = work / "spark-conf"
    conf.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home),
        SPARK_CONF_DIR=str(conf),
        SPARK_LOCAL_IP="127.0.0.1",
        JAVA_HOME=java_home(),
        PYSPARK_PYTHON=python,
        PYSPARK_DRIVER_PYTHON=python,
        TORCHSPARK_PYTHON=python,
        PATH=f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    for k in ("HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_MASTER", "PYSPARK_SUBMIT_ARGS"):
        env.pop(k, None)
    return env


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None, **kw):
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "ab")  # noqa: SIM115 (closed with the process, in stop())
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, **kw)
    p._log = f  # type: ignore[attr-defined]
    return p


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process and its descendants (found by pid ancestry), SIGKILL what remains."""
    tree: list[psutil.Process] = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for q in tree:
        try:
            q.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=20)
    for q in alive:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    for p in procs:
        if p.stdin:
            p.stdin.close()
        p.wait(timeout=10)
        log = getattr(p, "_log", None)
        if log:
            log.close()


def keep_logs(work: Path, name: str) -> Path:
    """Copies the logs (not the data) of a cluster's work dir to tests/cluster/logs/NAME-<time>."""
    dest = KEPT_LOGS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for f in work.rglob("*"):
        if f.is_file() and (f.suffix in (".log", ".json") or f.name in ("stdout", "stderr")):
            target = dest / f.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return dest


def wait_for(what: str, check, timeout: float, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.args[0]} exited with {p.returncode}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


class Cluster:
    """Common spark-submit plumbing. `spark_home`, `python` and `jar` default to this venv's
    pyspark, Python and matching torchspark jar; another Spark line passes its own, and `env`
    adds to what every process started sees."""

    name = "cluster"

    def __init__(
        self,
        work: Path,
        spark_home: Path = SPARK_HOME,
        python: str = PY,
        jar: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        from torchspark import jar_path

        self.work = work
        self.spark_home, self.python, self.jar = spark_home, python, jar or jar_path()
        self.env = {**base_env(work, spark_home, python), **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.submits = 0

    def master_args(self, deploy_mode: str) -> list[str]:
        raise NotImplementedError

    def submit_cmd(self, app: list[str], deploy_mode: str, conf=None, files=()) -> list[str]:
        """spark-submit of `app`: [script.py, args...] or ["--class", name, jar, args...]."""
        cmd = [
            str(self.spark_home / "bin" / "spark-submit"),
            *self.master_args(deploy_mode),
            "--driver-memory",
            "1g",
            "--executor-memory",
            "1g",
        ]
        settings = {
            # The first job must see every executor: that is what modelLoads is checked against.
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
            "spark.pyspark.python": self.python,
            "spark.pyspark.driver.python": self.python,
            "spark.executorEnv.TORCHSPARK_PYTHON": self.python,
            "spark.ui.enabled": "false",
            **(conf or {}),
        }
        for k, v in settings.items():
            cmd += ["--conf", f"{k}={v}"]
        if files:
            cmd += ["--files", ",".join(str(f) for f in files)]
        if str(app[0]).endswith(".py"):
            cmd += ["--jars", self.jar]
        return cmd + [str(a) for a in app]

    def popen(self, app, deploy_mode="client", conf=None, files=(), **kw) -> subprocess.Popen:
        self.submits += 1
        log = self.work / "submits" / f"{self.submits:02d}.log"
        p = start(self.submit_cmd(list(app), deploy_mode, conf, files), log, self.env, **kw)
        p.log_path = log  # type: ignore[attr-defined]
        return p

    def submit(self, app, deploy_mode="client", conf=None, files=(), timeout=600) -> str:
        """Runs spark-submit to the end; returns its output (raises with its tail on failure)."""
        t0 = time.monotonic()
        p = self.popen(app, deploy_mode, conf, files)
        try:
            p.wait(timeout=timeout)
        finally:
            stop([p])
        what = Path(str(app[0])).name if str(app[0]).endswith(".py") else app[1]
        print(f"[timing] {self.name} {deploy_mode} {what}: {time.monotonic() - t0:.1f} s")
        out = p.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
        if p.returncode != 0:
            tail = out[-6000:]
            raise AssertionError(f"spark-submit exited {p.returncode} ({p.log_path}):\n{tail}")  # type: ignore[attr-defined]
        return out

    def close(self, failed: bool) -> Path | None:
        stop(self.procs)
        # An executor JVM that died on a signal (a native crash, even at its exit, after its
        # tasks succeeded) leaves an hs_err file and nothing else the tests would see.
        crashes = sorted(self.work.rglob("hs_err_pid*.log"))
        kept = keep_logs(self.work, self.name) if failed or crashes else None
        if crashes:
            names = ", ".join(str(c.relative_to(self.work)) for c in crashes)
            raise AssertionError(f"{self.name}: a JVM crashed ({names}); logs kept in {kept}")
        return kept

    def executor_parents(self) -> list[subprocess.Popen]:
        """The processes we started whose descendants are the executor JVMs."""
        raise NotImplementedError

    def executor_pids(self, app: str | None = None) -> list[int]:
        """The executor JVMs (CoarseGrainedExecutorBackend, YARN's too) below the processes that
        launch them, only application `app`'s (its `--app-id`) when given."""
        pids = []
        for parent in self.executor_parents():
            try:
                below = psutil.Process(parent.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for c in below:
                try:
                    args = c.cmdline()
                except psutil.NoSuchProcess:
                    continue
                if any(a.endswith("CoarseGrainedExecutorBackend") for a in args) and (
                    app is None or app in args
                ):
                    pids.append(c.pid)
        return pids


class Standalone(Cluster):
    """A master and workers (by default 2 of 1 core and 2 GiB each: 2 executors of 1 core per
    application)."""

    name = "standalone"

    def __init__(self, work: Path, workers: int = 2, cores: int = 1, **line) -> None:
        super().__init__(work, **line)
        # The daemons only schedule: small heaps, and C1 alone starts them sooner.
        self.env.update(
            SPARK_DAEMON_MEMORY="512m", SPARK_DAEMON_JAVA_OPTS="-XX:TieredStopAtLevel=1"
        )
        self.cores = cores
        port, ui = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{port}"
        spark_class = str(self.spark_home / "bin" / "spark-class")
        self.master = start(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            work / "master.log",
            self.env,
        )
        self.procs.append(self.master)
        self.workers = []
        for i in range(workers):
            w = start(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    self.url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    "2g",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(work / f"worker{i}"),
                ],
                work / f"worker{i}.log",
                self.env,
            )
            self.procs.append(w)
            self.workers.append(w)

        def alive() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    return json.load(r).get("aliveworkers", 0) == workers
            except OSError:
                return False

        wait_for("standalone cluster", alive, 180, self.procs)

    def master_args(self, deploy_mode: str) -> list[str]:
        # spark.cores.max: minRegisteredResourcesRatio counts against it (unset, it waits for none).
        cores = str(len(self.workers) * self.cores)
        return ["--master", self.url, "--deploy-mode", deploy_mode, "--total-executor-cores", cores]

    def executor_parents(self) -> list[subprocess.Popen]:
        return self.workers


class Yarn(Cluster):
    """HDFS (1 datanode) + YARN (1 NodeManager) in one harness JVM; data put on HDFS at start."""

    name = "yarn"

    def __init__(self, work: Path, put: dict[str, Path]) -> None:
        super().__init__(work)
        cp = os.pathsep.join(
            [
                str(next(HARNESS.glob("torchspark-cluster-harness-*.jar"))),
                str(HARNESS / "lib" / "*"),
                str(SPARK_HOME / "jars" / "*"),
            ]
        )
        opens = [
            f"--add-opens=java.base/{p}=ALL-UNNAMED"
            for p in ("java.lang", "java.util", "java.nio", "sun.nio.ch", "java.lang.reflect")
        ]
        self.harness = start(
            [
                os.path.join(self.env["JAVA_HOME"], "bin", "java"),
                "-Xmx1g",
                # Start-up is class loading and cold code: C1 alone gets there sooner.
                "-XX:TieredStopAtLevel=1",
                *opens,
                "-cp",
                cp,
                "dev.torchspark.cluster.MiniCluster",
                str(work),
                "6144",
                "4",
                *[f"{local}={dest}" for dest, local in put.items()],
            ],
            work / "minicluster.log",
            self.env,
            cwd=work,
            stdin=subprocess.PIPE,
        )
        self.procs.append(self.harness)
        ready: dict = {}

        def up() -> bool:
            m = re.search(r"MINICLUSTER READY (\{.*\})", (work / "minicluster.log").read_text())
            if m:
                ready.update(json.loads(m.group(1)))
            return bool(m)

        wait_for("MiniDFS + MiniYARN", up, 300, self.procs)
        self.fs = ready["fs"]
        self.model = f"{self.fs}/models/resnet20.pt"
        self.env["HADOOP_CONF_DIR"] = ready["conf"]

    def master_args(self, deploy_mode: str) -> list[str]:
        return [
            "--master",
            "yarn",
            "--deploy-mode",
            deploy_mode,
            "--num-executors",
            "2",
            "--executor-cores",
            "1",
            # Spark's jars are on the node already: nothing to upload and localize per submit.
            "--conf",
            f"spark.yarn.jars=local:{SPARK_HOME / 'jars'}/*",
            "--conf",
            f"spark.yarn.appMasterEnv.TORCHSPARK_PYTHON={PY}",
            "--conf",
            f"spark.yarn.appMasterEnv.PYSPARK_PYTHON={PY}",
            "--conf",
            "spark.yarn.am.memory=512m",
            "--conf",
            "spark.yarn.appMasterEnv.SPARK_LOCAL_IP=127.0.0.1",
            "--conf",
            "spark.executorEnv.SPARK_LOCAL_IP=127.0.0.1",
            # A failed test run fails once, not twice.
            "--conf",
            "spark.yarn.maxAppAttempts=1",
        ]

    def executor_parents(self) -> list[subprocess.Popen]:
        # The NodeManager runs in the harness JVM and launches containers as its descendants.
        return [self.harness]

    def driver_stdout(self, app_id: str) -> str:
        """A cluster-mode driver's stdout, from the NodeManager's container log dir."""
        logs = sorted(self.work.glob(f"target/**/{app_id}/container_*_000001/stdout"))
        return logs[0].read_text(errors="replace") if logs else ""


# ---- what every cluster test checks ------------------------------------------------------------

DRIVER = ROOT / "tests" / "cluster" / "driver.py"
EXAMPLE = ROOT / "examples" / "score_images.py"
SCALA_EXAMPLE = "dev.torchspark.examples.ScoreImages"
EXECUTORS = 2


def session_failed(request, before: int) -> bool:
    return request.session.testsfailed > before


def check_rows(rows, oracle: dict[str, int | None], what: str) -> None:
    """rows: (path, prediction, error). Every image exactly once, predictions as NativeModel's."""
    names = [Path(str(p)).name for p, _, _ in rows]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"{what}: rows repeated: {sorted(dupes)[:5]}"
    assert sorted(names) == sorted(oracle), f"{what}: {len(names)} rows, {len(oracle)} images"
    got = {Path(str(p)).name: (None if e else pred) for p, pred, e in rows}
    wrong = {n: (got[n], oracle[n]) for n in oracle if got[n] != oracle[n]}
    assert not wrong, f"{what}: predictions differ from NativeModel's: {list(wrong.items())[:5]}"
    errors = [e for _, _, e in rows if e]
    assert len(errors) == 1 and "truncated.png" in str([p for p, _, e in rows if e])


def model_loads(output: str) -> int:
    """modelLoads from the Scala example's `torchspark: TorchSparkMetrics(...)` line, or from the
    Python example's `torchspark: {json}` line."""
    m = re.search(r"modelLoads[\"']?[=:]\s*(\d+)", output)
    assert m, f"no metrics line in:\n{output[-3000:]}"
    return int(m.group(1))


def read_parquet(spark, path: str) -> tuple[list[str], list[tuple]]:
    df = spark.read.parquet(path)
    return df.columns, [(r.path, r.prediction, r.error) for r in df.collect()]


def check_driver(result: dict, oracle) -> None:
    print(f"[timing] ImageScorer jobs and rdd.mapPartitions, seconds: {result['seconds']}")
    assert result["executors"] == EXECUTORS
    check_rows(result["first"]["rows"], oracle, "ImageScorer, first job")
    check_rows(result["second"]["rows"], oracle, "ImageScorer, second job")
    check_rows(result["rdd"]["rows"], oracle, "rdd.mapPartitions(score_partitions)")
    assert result["first"]["metrics"]["modelLoads"] == EXECUTORS
    assert result["second"]["metrics"]["modelLoads"] == 0
    assert result["first"]["metrics"]["imagesScored"] == len(oracle) - 1


def app_id(log: str) -> str:
    m = re.search(r"(application_\d+_\d+)", log)
    assert m, f"no YARN application id in:\n{log[-3000:]}"
    return m.group(1)


def kill_an_executor_mid_job(
    cluster: Cluster, images, model: str, out: Path, files=(), timeout: float = 300
) -> dict:
    """Runs driver.py's slow `kill` job (client mode) and SIGKILLs one of its executor JVMs once
    3 tasks are done and 8 or more remain; returns the driver's JSON after checking that the job
    succeeded and Spark saw the executor go."""
    p = cluster.popen([DRIVER, "kill", images, model, out], files=files)
    killed: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + timeout
        while not killed and p.poll() is None and time.monotonic() < deadline:
            log = p.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
            progress = re.findall(r"PROGRESS (\d+)/(\d+)", log)
            if progress and 3 <= int(progress[-1][0]) <= int(progress[-1][1]) - 8:
                # Only this application's executors: a finished one's may still be exiting.
                app = re.search(r"(application_\d+_\d+|app-\d{14}-\d{4})", log)
                pids = cluster.executor_pids(app.group(1) if app else None)
                if len(pids) == EXECUTORS:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append((pids[0], "/".join(progress[-1])))
            time.sleep(0.1)
        p.wait(timeout=timeout)
    finally:
        stop([p])
    log = p.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert killed, f"the job ended before an executor could be killed:\n{log[-3000:]}"
    assert p.returncode == 0, log[-6000:]
    assert "lost executor" in log.lower(), f"Spark never saw the kill of {killed[0]}"
    result = json.loads(Path(out).read_text())
    result["killed"] = killed[0]
    return result
