package dev.torchspark;

/**
 * The model file is missing, unreadable, not TorchScript, or fails its pinned sha256; also a native
 * library that cannot load.
 */
public class ModelLoadException extends TorchSparkException {
  public ModelLoadException(String message) {
    super(message);
  }

  public ModelLoadException(String message, Throwable cause) {
    super(message, cause);
  }
}
