package dev.torchspark;

/**
 * The JNI surface of libtorchspark.so. Batches cross as Arrow IPC stream bytes; models and pending
 * batches as {@code long} handles: ids in native tables, never reused, so a handle closed while
 * another thread is in a call on it is safe (the running call finishes, a later one throws a {@link
 * ConfigException} naming the handle). Native errors are thrown as the {@link TorchSparkException}
 * subclass that the Rust side's one mapping table picks.
 *
 * <p>A JVM shutdown hook drains the engines before {@code exit()} runs libtorch's static
 * destructors (docs/engine.md, "Lifecycle").
 */
public final class NativeBridge {
  private NativeBridge() {}

  static {
    NativeLoader.load();
    // Shutdown hooks run before exit() and its C++ static destructors: queued jobs go, passes in
    // flight finish (bounded by TORCHSPARK_DRAIN_MS), later native calls of other threads wait.
    try {
      Runtime.getRuntime()
          .addShutdownHook(new Thread(NativeBridge::shutdown, "torchspark-native-shutdown"));
    } catch (IllegalStateException alreadyExiting) {
      // First used while the JVM exits: the library's own exit handler drains instead.
    }
  }

  /**
   * Opens the model described by a JSON ModelConfig: the JVM's loaded model when neither the file
   * nor its spec changed on disk since it was loaded, else a fresh load (docs/model-cache.md).
   */
  public static native long openModel(String configJson);

  /**
   * Releases a handle. The model stays loaded for later opens until its file or spec changes; a
   * replaced model is freed when its last handle closes. Calls running on the handle on other
   * threads finish first; later calls throw a {@link ConfigException} ("model handle N is not
   * open"). Closing a handle twice (or 0) does nothing.
   */
  public static native void closeModel(long handle);

  /**
   * Scores one Arrow IPC batch; returns the result batch as Arrow IPC bytes. No JVM caller: every
   * call goes through {@link #submit} + {@link #collect}; kept while the native library exports it.
   */
  public static native byte[] score(long handle, byte[] arrowIpc, String optionsJson);

  /**
   * Featurizes one Arrow IPC batch; returns the result batch as Arrow IPC bytes. No JVM caller (see
   * {@link #score}).
   */
  public static native byte[] featurize(long handle, byte[] arrowIpc, String optionsJson);

  /**
   * Runs one Arrow IPC batch through a model's general path (spec_version 2, or a version-1 image
   * spec as one input and one output): one column per declared output, then {@code error}. Options
   * may map input names to columns ({@code {"columns": {"meta": ["a","b"]}}}). No JVM caller (see
   * {@link #score}); the options are those of {@link #submit} with op 2.
   */
  public static native byte[] predict(long handle, byte[] arrowIpc, String optionsJson);

  /**
   * The schema {@link #predict} returns for a spec's JSON text, without loading any model: an Arrow
   * IPC stream with the schema and no batches. Its metadata {@code torchspark.inputs} lists the
   * inputs (name, kind, columns, dtype, shape) as JSON; a {@code vector} output's field carries
   * {@code torchspark.column = vector}.
   */
  public static native byte[] describe(String specJson);

  /**
   * The schema a call with {@code preset} returns for a spec's JSON text, without loading any
   * model: an Arrow IPC stream with the schema and no batches (one field per output the preset
   * selects, then {@code error}; metadata as {@link #describe}). Presets: {@code score}, {@code
   * featurize} (a version-1 image spec), {@code predict} (every output; {@link #describe}) and
   * {@code embed} (a spec's one {@code vector} output); a preset the spec cannot give throws a
   * {@link ModelSpecException} naming what is missing (docs/internals.md, the call protocol).
   */
  public static native byte[] describePreset(String specJson, String preset);

  /**
   * Prepares one Arrow IPC batch on the calling thread (read, decode, assemble) and queues its
   * forward passes in the model's engine (docs/engine.md). Returns a pending handle that must be
   * given once to {@link #collect} (until it returns bytes or throws) or to {@link #discard}.
   *
   * @param op 0 score, 1 featurize, 2 predict: the preset when the options name none; the JVM
   *     always names it ({@code "preset"} in the options, which wins)
   * @param taskId the task's id ({@code TaskContext.taskAttemptId}), for {@link #cancelTask}
   */
  public static native long submit(
      long handle, int op, byte[] arrowIpc, String optionsJson, long taskId);

  /**
   * The result of a {@link #submit} as Arrow IPC bytes, waiting at most {@code waitMs}; {@code
   * null} when it is not ready yet. The pending handle is freed when this returns bytes or throws.
   */
  public static native byte[] collect(long pending, long waitMs);

  /**
   * Frees a pending handle without its result (its task failed or was killed); a collect running on
   * it on another thread keeps it until it returns. A freed handle (or 0) does nothing.
   */
  public static native void discard(long pending);

  /** Drops a task's queued work from the model's engine; returns the number of jobs dropped. */
  public static native long cancelTask(long handle, long taskId);

  /** The rows per forward pass that batch size 0 ("auto") means for this model. */
  public static native int autoBatchSize(long handle);

  /**
   * The engine's sizes and counters as JSON (mode, workers, threads_per_worker, queued_rows...).
   */
  public static native String engineStats(long handle);

  /** How many models this JVM has loaded from disk (a changed file counts once more). */
  public static native long loadCount();

  /**
   * The process is exiting (the shutdown hook calls this): drops every engine's queued jobs and
   * waits, at most TORCHSPARK_DRAIN_MS (10 s), for the forward passes in flight; afterwards a new
   * call of another thread throws "the process is exiting", and a thread whose wait for a result
   * ends then waits until the process is gone. Returns the threads still in a pass.
   */
  public static native long shutdown();

  /** Test hook: panics inside native code; must surface as a TorchSparkException. */
  public static native void panicForTest();
}
