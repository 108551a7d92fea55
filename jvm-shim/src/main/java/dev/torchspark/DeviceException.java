package dev.torchspark;

/** The requested device (for example cuda:0) is not available. */
public class DeviceException extends TorchSparkException {
  public DeviceException(String message) {
    super(message);
  }

  public DeviceException(String message, Throwable cause) {
    super(message, cause);
  }
}
