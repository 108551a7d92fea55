package dev.torchspark;

/**
 * The JNI surface of libtorchspark.so. Batches cross as Arrow IPC stream bytes; models as {@code
 * long} handles released once with {@link #closeModel}. Native errors are thrown as the {@link
 * TorchSparkException} subclass that the Rust side's one mapping table picks.
 */
public final class NativeBridge {
  private NativeBridge() {}

  static {
    NativeLoader.load();
  }

  /** Opens (or reuses, once per JVM) the model described by a JSON ModelConfig. */
  public static native long openModel(String configJson);

  /** Releases a handle; the model itself stays loaded for the life of the JVM. */
  public static native void closeModel(long handle);

  /** Scores one Arrow IPC batch; returns the result batch as Arrow IPC bytes. */
  public static native byte[] score(long handle, byte[] arrowIpc, String optionsJson);

  /** Featurizes one Arrow IPC batch; returns the result batch as Arrow IPC bytes. */
  public static native byte[] featurize(long handle, byte[] arrowIpc, String optionsJson);

  /** How many models this JVM has loaded from disk. */
  public static native long loadCount();

  /** Test hook: panics inside native code; must surface as a TorchSparkException. */
  public static native void panicForTest();
}
