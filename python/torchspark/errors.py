"""Exceptions raised by torchspark; the native error kinds map onto them one to one."""


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
