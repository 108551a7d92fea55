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

  /**
   * Opens the model described by a JSON ModelConfig: the JVM's loaded model when neither the file
   * nor its spec changed on disk since it was loaded, else a fresh load (docs/model-cache.md).
   */
  public static native long openModel(String configJson);

  /**
   * Releases a handle. The model stays loaded for later opens until its file or spec changes; a
   * replaced model is freed when its last handle closes.
   */
  public static native void closeModel(long handle);

  /** Scores one Arrow IPC batch; returns the result batch as Arrow IPC bytes. */
  public static native byte[] score(long handle, byte[] arrowIpc, String optionsJson);

  /** Featurizes one Arrow IPC batch; returns the result batch as Arrow IPC bytes. */
  public static native byte[] featurize(long handle, byte[] arrowIpc, String optionsJson);

  /** How many models this JVM has loaded from disk (a changed file counts once more). */
  public static native long loadCount();

  /** Test hook: panics inside native code; must surface as a TorchSparkException. */
  public static native void panicForTest();
}
