package dev.torchspark;

/** A batch or a row cannot be read (the message names the row). */
public class InputException extends TorchSparkException {
  public InputException(String message) {
    super(message);
  }

  public InputException(String message, Throwable cause) {
    super(message, cause);
  }
}
