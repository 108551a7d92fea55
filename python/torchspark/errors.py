"""Exceptions raised by torchspark; the native error kinds map onto them one to one."""

import importlib.util
import re
import sys


class TorchSparkError(RuntimeError):
    """Base of every torchspark error."""


class ModelLoadError(TorchSparkError):
    """Model file missing, unreadable, not TorchScript, or failing its pinned sha256."""


class ModelSpecError(TorchSparkError):
    """The model spec JSON is missing, malformed or contradictory (the field is named)."""


class ConfigError(TorchSparkError, ValueError):
    """An option is invalid."""


class DeviceError(TorchSparkError):
    """The requested device is not available."""


class InputError(TorchSparkError, ValueError):
    """A batch or a row cannot be read (the row is named)."""


class InferenceError(TorchSparkError):
    """libtorch failed in the forward pass."""


def missing_extra(module: str, extra: str, what: str) -> ImportError:
    """The ImportError for an optional dependency that is not installed: names what needs it and
    the extra of python/pyproject.toml that installs it."""
    return ImportError(
        f"{what} needs {module}, which is not installed for {sys.executable}: "
        f"pip install 'torchspark[{extra}]' (or pip install {module})",
        name=module,
    )


def require_extra(module: str, extra: str, what: str) -> None:
    """Raises `missing_extra` unless `module` can be imported (it is not imported here)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing_extra(module, extra, what)


# The C ABI's error codes (torchspark_core::ErrorKind).
BY_CODE = {
    1: ModelLoadError,
    2: ModelSpecError,
    3: ConfigError,
    4: DeviceError,
    5: InputError,
    6: InferenceError,
    7: TorchSparkError,
}


# ---- JVM and Python-worker failures as these classes -------------------------------------------
# The JVM's exception classes (dev.torchspark.*Exception) map onto these one to one.
_JAVA_PACKAGE = "dev.torchspark."
BY_JAVA = {
    "ModelLoadException": ModelLoadError,
    "ModelSpecException": ModelSpecError,
    "ConfigException": ConfigError,
    "DeviceException": DeviceError,
    "InputException": InputError,
    "InferenceException": InferenceError,
    "TorchSparkException": TorchSparkError,
}
_PYTHON_EXCEPTION = "org.apache.spark.api.python.PythonException"
# The last line of a Python worker's traceback, when torchspark raised in the worker.
_WORKER_LINE = re.compile(r"^torchspark\.errors\.(\w+): ", re.MULTILINE)


def _class_of(java_exc) -> type[TorchSparkError] | None:
    """The Python class of a dev.torchspark exception (or of its nearest known superclass)."""
    c = java_exc.getClass()
    while c is not None:
        name = str(c.getName())
        if name.startswith(_JAVA_PACKAGE) and name[len(_JAVA_PACKAGE) :] in BY_JAVA:
            return BY_JAVA[name[len(_JAVA_PACKAGE) :]]
        if name == "java.lang.Throwable":
            return None
        c = c.getSuperclass()
    return None


def _from_worker_traceback(text: str) -> TorchSparkError | None:
    # A Python worker's exception reaches the JVM as its traceback text only: the class is read
    # from the traceback's last line, which Python writes as `module.Class: message`.
    found = list(_WORKER_LINE.finditer(text))
    if not found:
        return None
    cls = globals().get(found[-1].group(1))
    if not (isinstance(cls, type) and issubclass(cls, TorchSparkError)):
        return None
    return cls(text[found[-1].end() :].strip())


def from_java(java_exc) -> TorchSparkError | None:
    """The torchspark error that a JVM exception carries in its cause chain, or None.

    A `dev.torchspark.*Exception` (thrown on the driver, or in a task: Spark's job failure keeps
    it as a cause) becomes the matching class with its message; a Python worker's failure
    (`org.apache.spark.api.python.PythonException`) whose traceback ends in a torchspark error
    becomes that error. The JVM exception stays available as `.java_exception`."""
    e, depth = java_exc, 0
    while e is not None and depth < 32:
        cls = _class_of(e)
        err = cls(str(e.getMessage())) if cls is not None else None
        if err is None and str(e.getClass().getName()) == _PYTHON_EXCEPTION:
            err = _from_worker_traceback(str(e.getMessage()))
        if err is not None:
            err.java_exception = java_exc
            return err
        e, depth = e.getCause(), depth + 1
    return None


def install_py4j_handler() -> None:
    """Makes every py4j call re-raise a torchspark failure as its class in this module.

    PySpark converts py4j errors by wrapping `py4j.protocol.get_return_value` (its
    `install_exception_handler`, which each new SparkSession runs again); torchspark wraps the
    same function underneath, then reinstalls PySpark's wrapper over it, so both conversions
    stay in place. Idempotent."""
    import py4j.java_gateway
    import py4j.protocol
    from py4j.protocol import Py4JJavaError

    original = py4j.protocol.get_return_value
    if not getattr(original, "_torchspark", False):

        def get_return_value(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except Py4JJavaError as e:
                converted = from_java(e.java_exception)
                if converted is None:
                    raise
                raise converted from None

        get_return_value._torchspark = True
        py4j.protocol.get_return_value = get_return_value
    try:
        from pyspark.errors.exceptions.captured import install_exception_handler
    except ImportError:  # pragma: no cover - pyspark older than 3.4
        py4j.java_gateway.get_return_value = py4j.protocol.get_return_value
        return
    install_exception_handler()


# A Spark Connect client gets the server's exception as text that starts `(class) message`.
_CONNECT = re.compile(r"\(dev\.torchspark\.(\w+)\) (.*?)(?:\n\s*\nJVM stacktrace:|\Z)", re.DOTALL)


def from_connect(exc: Exception) -> TorchSparkError | None:
    """The torchspark error that a Spark Connect exception reports (the server's driver-side
    checks fail `transform` this way), or None."""
    m = _CONNECT.match(str(exc))
    cls = BY_JAVA.get(m.group(1)) if m else None
    if cls is None:
        return None
    err = cls(m.group(2).strip())
    err.connect_exception = exc
    return err
