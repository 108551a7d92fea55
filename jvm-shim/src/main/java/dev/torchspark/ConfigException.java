package dev.torchspark;

/** An option passed to the native scorer is invalid. */
public class ConfigException extends TorchSparkException {
  public ConfigException(String message) {
    super(message);
  }

  public ConfigException(String message, Throwable cause) {
    super(message, cause);
  }
}
