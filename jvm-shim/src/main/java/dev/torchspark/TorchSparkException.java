package dev.torchspark;

/** Base of every torchspark error; native errors arrive as one of its subclasses. */
public class TorchSparkException extends RuntimeException {
  public TorchSparkException(String message) {
    super(message);
  }

  public TorchSparkException(String message, Throwable cause) {
    super(message, cause);
  }
}
