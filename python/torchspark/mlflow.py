"""MLflow model URIs as model paths (docs/mlflow.md).

`models:/name/<version>`, `models:/name@alias`, `models:/m-<id>` (an MLflow 3 logged model) and
`runs:/<run>/<path>` are resolved ONCE, on the driver, through MLflow's client (the tracking URI
of MLFLOW_TRACKING_URI / mlflow.set_tracking_uri) to a version and its artifact location, whose
files are downloaded once into a local cache. Every surface then scores that local copy: a job
never asks the registry again, so an alias moved mid-job cannot mix two versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from torchspark.errors import ConfigError, ModelLoadError, missing_extra

log = logging.getLogger("torchspark.mlflow")

SCHEMES = ("models:/", "runs:/")
MODEL_SUFFIXES = (".pt", ".pt2")
# mlflow.pytorch.log_model saves a TorchScript module as data/model.pth (a TorchScript zip); an
# eager module's pickle is also model.pth, so a .pth counts only when it is TorchScript.
PTH = ".pth"


def is_mlflow_uri(path: object) -> bool:
    """True for a `models:/` or `runs:/` URI (anything else is a file path or storage URI)."""
    return isinstance(path, str) and path.startswith(SCHEMES)


@dataclass(frozen=True)
class Resolved:
    """What an MLflow URI resolved to: `version` and `name` for a registered model (None for
    `runs:/` and `models:/m-<id>`), the `run_id` that logged it, its artifact location
    (`storage_uri`), the folder it was downloaded to and the model file in it."""

    uri: str
    tracking_uri: str
    name: str | None
    version: str | None
    run_id: str | None
    storage_uri: str
    local_dir: str
    model_path: str

    def describe(self) -> str:
        what = f"{self.name} version {self.version}" if self.version else "no registry version"
        return (
            f"{self.uri} -> {what} (run {self.run_id}), artifacts {self.storage_uri}, "
            f"model {self.model_path} (tracking server {self.tracking_uri})"
        )


def _mlflow():
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise missing_extra("mlflow", "mlflow", "an MLflow model URI (models:/, runs:/)") from None
    return mlflow, MlflowClient


def _check_reachable(tracking_uri: str, uri: str) -> None:
    """An http(s) tracking server is asked for /health with a short timeout first: MLflow's
    client retries a refused connection for minutes before it says so."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=10) as r:
            r.read()
    except Exception as e:  # noqa: BLE001  (URLError, timeout, HTTP errors: all "unreachable")
        raise ConfigError(
            f"{uri}: the MLflow tracking server {tracking_uri} is unreachable ({e}); set "
            "MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri) to a server this driver can reach"
        ) from None


def _not_found(e: Exception) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _registered(client, name: str, uri: str, server: str):
    """The registered model `name`, or ConfigError naming the URI and the server."""
    try:
        return client.get_registered_model(name)
    except Exception as e:  # noqa: BLE001  (MlflowException)
        if _not_found(e):
            raise ConfigError(
                f"{uri}: the MLflow tracking server {server} has no registered model named {name!r}"
            ) from None
        raise ConfigError(f"{uri}: the MLflow tracking server {server} failed: {e}") from None


def _versions(client, name: str) -> list[str]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((v.version for v in found), key=lambda v: int(v))


def resolve(uri: str, cache_dir: str | os.PathLike | None = None) -> Resolved:
    """Resolves an MLflow model URI to a version and its artifact location, and downloads its
    files (once per artifact location, into `cache_dir`, default: <tmp>/torchspark-mlflow).

    Raises ConfigError naming the URI, the server and what it has (for an unknown name, version
    or alias, or an unreachable server) and ModelLoadError for artifacts without exactly one
    `.pt`/`.pt2` model whose spec JSON sits beside it."""
    if not is_mlflow_uri(uri):
        raise ConfigError(f"{uri!r} is not an MLflow model URI (models:/... or runs:/...)")
    mlflow, MlflowClient = _mlflow()
    server = mlflow.get_tracking_uri()
    _check_reachable(server, uri)
    client = MlflowClient(tracking_uri=server)
    name = version = run_id = None
    if uri.startswith("runs:/"):
        rest = uri[len("runs:/") :].strip("/")
        run_id, _, sub = rest.partition("/")
        if not run_id:
            raise ConfigError(f"{uri}: a runs:/ URI is runs:/<run id>/<artifact path>")
        try:
            run = client.get_run(run_id)
        except Exception as e:  # noqa: BLE001  (MlflowException)
            raise ConfigError(
                f"{uri}: the MLflow tracking server {server} has no run {run_id!r} ({e})"
            ) from None
        storage = run.info.artifact_uri.rstrip("/") + (f"/{sub}" if sub else "")
    else:
        rest = uri[len("models:/") :].strip("/")
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            try:
                lm = client.get_logged_model(rest)
            except Exception as e:  # noqa: BLE001  (MlflowException)
                raise ConfigError(
                    f"{uri}: the MLflow tracking server {server} has no logged model {rest!r} ({e})"
                ) from None
            run_id, storage = lm.source_run_id, lm.artifact_location
        else:
            if "@" in rest:
                name, _, alias = rest.partition("@")
                rm = _registered(client, name, uri, server)
                aliases = dict(getattr(rm, "aliases", {}) or {})
                if alias not in aliases:
                    have = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items()))
                    raise ConfigError(
                        f"{uri}: the registered model {name!r} on the MLflow tracking server "
                        f"{server} has no alias {alias!r} (its aliases: {have or 'none'})"
                    )
                version = str(aliases[alias])
            else:
                name, _, version = rest.rpartition("/")
                if not name or not version.isdigit():
                    raise ConfigError(
                        f"{uri}: expected models:/<name>/<version number>, models:/<name>@<alias>"
                        " or models:/m-<model id> (registry stages are not supported: use an "
                        "alias)"
                    )
                _registered(client, name, uri, server)
            try:
                mv = client.get_model_version(name, version)
            except Exception as e:  # noqa: BLE001  (MlflowException)
                if not _not_found(e):
                    raise ConfigError(f"{uri}: the MLflow tracking server {server} failed: {e}")
                raise ConfigError(
                    f"{uri}: the registered model {name!r} on the MLflow tracking server "
                    f"{server} has no version {version} (its versions: "
                    f"{', '.join(_versions(client, name)) or 'none'})"
                ) from None
            run_id = mv.run_id
            storage = client.get_model_version_download_uri(name, version)
    local = _download(mlflow, storage, server, uri, cache_dir)
    resolved = Resolved(
        uri=uri,
        tracking_uri=server,
        name=name,
        version=version,
        run_id=run_id,
        storage_uri=storage,
        local_dir=str(local),
        model_path=str(_model_file(local, uri, storage)),
    )
    log.info("resolved %s", resolved.describe())
    return resolved


def _download(mlflow, storage: str, server: str, uri: str, cache_dir) -> Path:
    """The artifacts at `storage`, downloaded once into the cache (keyed by server and location:
    a registered version's artifacts do not change), written to a temporary folder first and
    renamed, so a concurrent or interrupted download never leaves a half folder in use."""
    root = Path(cache_dir or Path(tempfile.gettempdir()) / "torchspark-mlflow")
    key = hashlib.sha256(f"{server}\n{storage}".encode()).hexdigest()[:24]
    dst = root / key
    if dst.is_dir():
        log.info("%s: cache hit %s", uri, dst)
        return dst
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        got = mlflow.artifacts.download_artifacts(
            artifact_uri=storage, dst_path=str(tmp), tracking_uri=server
        )
    except Exception as e:  # noqa: BLE001  (MlflowException, OSError, boto/azure errors)
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(
            f"{uri}: cannot download its artifacts {storage} (MLflow tracking server {server}): {e}"
        ) from None
    got = Path(got)
    if got.is_file():  # a runs:/ URI may name the model file itself; its spec sits beside it
        base = urllib.parse.urlparse(storage).path.rsplit("/", 1)[0]
        spec = Path(got.name).with_suffix(".json").name
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=storage.rsplit("/", 1)[0] + "/" + spec,
                dst_path=str(got.parent),
                tracking_uri=server,
            )
        except Exception:  # noqa: BLE001  (no spec: _model_file names what is missing)
            log.debug("%s: no spec %s beside %s", uri, spec, base)
    try:
        os.rename(tmp, dst)
    except OSError:  # another process renamed its copy first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    log.info(
        "%s: downloaded %s to %s (%d bytes, %.2f s)", uri, storage, dst, size, time.monotonic() - t0
    )
    return dst


def _model_file(local: Path, uri: str, storage: str) -> Path:
    """The one `.pt`/`.pt2` under `local` with its spec (`model.pt` -> `model.json`) beside it."""
    from torchspark.spec_files import spec_path

    models = sorted(
        p
        for p in local.rglob("*")
        if p.is_file() and (p.suffix in MODEL_SUFFIXES or (p.suffix == PTH and _torchscript(p)))
    )
    usable = [p for p in models if Path(spec_path(str(p))).is_file()]
    if len(usable) == 1:
        return usable[0]
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20 else "")
    if not usable:
        why = (
            "no .pt/.pt2 model with its spec JSON beside it (model.pt -> model.json)"
            if models
            else "no .pt, .pt2 or TorchScript .pth (mlflow.pytorch) model file"
        )
    else:
        why = f"{len(usable)} models with specs; name one with runs:/<run>/<path to it>"
    raise ModelLoadError(f"{uri}: its artifacts {storage} hold {why}; found: {shown or 'nothing'}")


def _torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with code/ and data.pkl under one root folder."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("/data.pkl") for n in names)


TRACKING_URI_CONF = "spark.torchspark.mlflow.trackingUri"


def share_tracking_uri(spark=None) -> None:
    """Sets the session's `spark.torchspark.mlflow.trackingUri` (what the JVM resolves MLflow URIs
    with) to this process's http(s) tracking URI (MLFLOW_TRACKING_URI / mlflow.set_tracking_uri),
    unless the session names one already."""
    from pyspark.sql import SparkSession

    spark = spark or SparkSession.getActiveSession()
    if spark is None or spark.conf.get(TRACKING_URI_CONF, None):
        return
    mlflow, _ = _mlflow()
    server = mlflow.get_tracking_uri()
    if server.startswith(("http://", "https://")):
        spark.conf.set(TRACKING_URI_CONF, server)


def local_model_path(path: str) -> str:
    """`path` itself, or for an MLflow URI the local model file it resolves to."""
    return resolve(path).model_path if is_mlflow_uri(path) else path


def _pyfunc_class():
    mlflow, _ = _mlflow()

    class TorchSparkPyfunc(mlflow.pyfunc.PythonModel):
        """The pyfunc flavor of a torchspark model: scores a pandas DataFrame with NativeModel
        (a version-1 image spec: `score`, its image bytes in the frame's one column; else
        `predict`, through the spec's `inputs`)."""

        def load_context(self, context):
            import json

            # Through the package, as any user of it (this runs in MLflow's process; an import
            # of native_model here would put mlflow and native_model on an import circle).
            import torchspark

            path = context.artifacts["model"]
            self.model = torchspark.NativeModel(path)
            with open(context.artifacts["spec"]) as f:
                self.image = "inputs" not in json.load(f)

        def predict(self, context, model_input, params=None):
            import pyarrow as pa

            table = pa.Table.from_pandas(model_input, preserve_index=False)
            run = self.model.score if self.image else self.model.predict
            return run(table).to_pandas()

    return TorchSparkPyfunc


def log_model(
    model_path_or_module,
    name: str = "model",
    *,
    spec: dict | str | os.PathLike | None = None,
    registered_model_name: str | None = None,
    pip_requirements: list[str] | None = None,
    **kwargs,
):
    """Logs a torchspark model to the active MLflow run (one is started when none is) as an
    MLflow model with a `pyfunc` flavor: `mlflow.pyfunc.load_model` and `spark_udf` score it
    through NativeModel, and `models:/...`/`runs:/...` URIs of it work on every torchspark
    surface. Returns MLflow's ModelInfo.

    `model_path_or_module`: a `.pt`/`.pt2` file (its spec beside it unless `spec` is given, and
    the tokenizer files a text spec names), or a `torch.jit.ScriptModule` (then `spec` is
    required: a dict or a JSON file). `registered_model_name` registers a new version too."""
    import json

    from torchspark.spec_files import spec_path, tokenizer_files

    mlflow, _ = _mlflow()
    tmp = Path(tempfile.mkdtemp(prefix="torchspark-log-"))
    try:
        if isinstance(model_path_or_module, (str, os.PathLike)):
            src = Path(model_path_or_module)
            if not src.is_file():
                raise ModelLoadError(f"log_model: model file {src} not found")
            model = tmp / src.name
            shutil.copy(src, model)
            spec_src = Path(spec_path(str(src)))
        else:
            import torch

            if not isinstance(model_path_or_module, torch.jit.ScriptModule):
                raise ConfigError(
                    "log_model takes a .pt/.pt2 file or a torch.jit.ScriptModule (script or "
                    f"trace it first), not {type(model_path_or_module).__name__}"
                )
            if spec is None:
                raise ConfigError("log_model of a module needs spec= (a dict or a JSON file)")
            model = tmp / "model.pt"
            model_path_or_module.save(str(model))
            spec_src = None
        spec_dst = Path(spec_path(str(model)))
        if isinstance(spec, dict):
            spec_dst.write_text(json.dumps(spec, indent=2))
        elif spec is not None:
            shutil.copy(spec, spec_dst)
        elif spec_src is not None and spec_src.is_file():
            shutil.copy(spec_src, spec_dst)
        else:
            raise ModelLoadError(f"log_model: no spec {spec_src} beside the model; pass spec=")
        artifacts = {"model": str(model), "spec": str(spec_dst)}
        parsed = json.loads(spec_dst.read_text())
        for _, tok, _ in tokenizer_files(parsed, str(spec_dst)):
            base = spec_src.parent if spec_src is not None and not isinstance(spec, dict) else None
            if isinstance(spec, (str, os.PathLike)):
                base = Path(spec).parent
            if base is None or not (base / tok).is_file():
                raise ModelLoadError(f"log_model: tokenizer {tok} named by the spec not found")
            shutil.copy(base / tok, tmp / tok)
            artifacts[f"tokenizer:{tok}"] = str(tmp / tok)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_pyfunc_class()(),
            artifacts=artifacts,
            registered_model_name=registered_model_name,
            pip_requirements=pip_requirements or ["torchspark"],
            **kwargs,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
