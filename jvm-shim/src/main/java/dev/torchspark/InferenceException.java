package dev.torchspark;

/** libtorch failed during the forward pass. */
public class InferenceException extends TorchSparkException {
  public InferenceException(String message) {
    super(message);
  }

  public InferenceException(String message, Throwable cause) {
    super(message, cause);
  }
}
