package dev.torchspark;

/**
 * The model spec JSON is missing, malformed, or contradicts itself (the message names the field).
 */
public class ModelSpecException extends TorchSparkException {
  public ModelSpecException(String message) {
    super(message);
  }

  public ModelSpecException(String message, Throwable cause) {
    super(message, cause);
  }
}
