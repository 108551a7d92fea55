package dev.torchspark

import org.apache.spark.SparkContext
import org.apache.spark.util.LongAccumulator

/** Counters of one transform, visible in the Spark UI (named accumulators) and readable after an
  * action: rows scored, rows with errors, rows skipped, model loads, and where the time went.
  *
  * Rows add up: `rowsIn` (rows read) = `rowsOut` (rows written) + `rowsSkipped` (bad rows dropped
  * with `handleInvalid=skip`); `rowsWithErrors` counts the bad rows whatever was done with them, so
  * `rowsOut` = `rowsScored` + the bad rows kept (`handleInvalid=keep`). `rowsScored` counts the
  * rows every transformer ran through its model (images, text, tensors); `imagesScored` is its old
  * name, kept as an alias (the same counter) for one release. Like every accumulator, the counts
  * add up over the actions that run the transformed DataFrame, and a retried task's rows count
  * again.
  *
  * The times are summed over tasks (so they can exceed the wall time) and split by stage:
  *   - `readTimeMs`: waiting for input rows (file reads and whatever runs upstream);
  *   - `bridgeTimeMs`: the JVM side of the bridge (Arrow encode, decode, building the rows);
  *   - `nativeTimeMs`: inside the JNI calls, which is `preprocessTimeMs` (decode, resize, crop,
  *     normalize) plus `forwardTimeMs` (the model) plus the native Arrow IPC work;
  *   - `decodeTimeMs`, `resizeTimeMs`: the decode and resize parts of `preprocessTimeMs`, summed
  *     over rows (with `numThreads` > 1 rows are preprocessed in parallel, so these are thread time
  *     and their sum can exceed `preprocessTimeMs`, which is wall time).
  *
  * With `engine=shared` (docs/engine.md): `queueTimeMs` is the time the task's batches waited in
  * the engine's queue; `waitTimeMs` the time the task was blocked collecting results (the forward
  * time not hidden behind reading and encoding the next batch; near 0 is best); `engineBatches`
  * counts the forward passes the task's rows went through and `engineBatchRows` sums the rows of
  * those passes (other tasks' rows merged in included): their ratio is the mean forward batch.
  *
  * `truncatedRows` counts text rows cut at the spec's `max_length` (the rest of the text is not
  * embedded); `decodeTimeMs` holds the tokenizing time of text rows.
  */
final class TorchSparkMetrics private (
    val rowsScored: LongAccumulator,
    val rowsWithErrors: LongAccumulator,
    val rowsSkipped: LongAccumulator,
    val nativeTimeMs: LongAccumulator,
    val modelLoads: LongAccumulator,
    val readTimeMs: LongAccumulator,
    val bridgeTimeMs: LongAccumulator,
    val preprocessTimeMs: LongAccumulator,
    val forwardTimeMs: LongAccumulator,
    val decodeTimeMs: LongAccumulator,
    val resizeTimeMs: LongAccumulator,
    val truncatedRows: LongAccumulator,
    val queueTimeMs: LongAccumulator,
    val waitTimeMs: LongAccumulator,
    val engineBatches: LongAccumulator,
    val engineBatchRows: LongAccumulator,
    val rowsIn: LongAccumulator,
    val rowsOut: LongAccumulator
) extends Serializable {

  /** For a `modelPath` given as an MLflow URI (`models:/name@alias`, ...): the version this
    * transform resolved on the driver, which every task of its job reads; None otherwise. Also in
    * [[values]] as `modelVersion` (the registry version number; 0 when none) and in `toString`.
    */
  @volatile var mlflow: Option[MlflowModel] = None

  /** [[rowsScored]] by its old name: it counted text and tensor rows too. */
  @deprecated("use rowsScored (the same counter); imagesScored goes in the next release", "0.1.0")
  def imagesScored: LongAccumulator = rowsScored

  /** Name → value of every counter (`imagesScored` too: [[rowsScored]]'s value, for one release).
    */
  def values: Map[String, Long] = Map(
    "rowsScored" -> rowsScored.value.longValue,
    "imagesScored" -> rowsScored.value.longValue,
    "rowsWithErrors" -> rowsWithErrors.value.longValue,
    "rowsSkipped" -> rowsSkipped.value.longValue,
    "nativeTimeMs" -> nativeTimeMs.value.longValue,
    "modelLoads" -> modelLoads.value.longValue,
    "readTimeMs" -> readTimeMs.value.longValue,
    "bridgeTimeMs" -> bridgeTimeMs.value.longValue,
    "preprocessTimeMs" -> preprocessTimeMs.value.longValue,
    "forwardTimeMs" -> forwardTimeMs.value.longValue,
    "decodeTimeMs" -> decodeTimeMs.value.longValue,
    "resizeTimeMs" -> resizeTimeMs.value.longValue,
    "truncatedRows" -> truncatedRows.value.longValue,
    "queueTimeMs" -> queueTimeMs.value.longValue,
    "waitTimeMs" -> waitTimeMs.value.longValue,
    "engineBatches" -> engineBatches.value.longValue,
    "engineBatchRows" -> engineBatchRows.value.longValue,
    "rowsIn" -> rowsIn.value.longValue,
    "rowsOut" -> rowsOut.value.longValue,
    "modelVersion" -> mlflow
      .flatMap(_.version)
      .flatMap(v => scala.util.Try(v.toLong).toOption)
      .getOrElse(0L)
  )

  /** [[values]] for Java and py4j callers, in a stable order. */
  def javaValues: java.util.Map[String, java.lang.Long] = {
    val m = new java.util.LinkedHashMap[String, java.lang.Long]()
    values.toSeq.sortBy(_._1).foreach { case (k, v) => m.put(k, java.lang.Long.valueOf(v)) }
    m
  }

  override def toString: String =
    (values.map { case (k, v) => s"$k=$v" } ++ mlflow.map(m => s"model=${m.describe}"))
      .mkString("TorchSparkMetrics(", ", ", ")")
}

object TorchSparkMetrics {
  private[torchspark] def apply(sc: SparkContext, name: String): TorchSparkMetrics = {
    def acc(what: String): LongAccumulator = sc.longAccumulator(s"torchspark.$name.$what")
    new TorchSparkMetrics(
      acc("rowsScored"),
      acc("rowsWithErrors"),
      acc("rowsSkipped"),
      acc("nativeTimeMs"),
      acc("modelLoads"),
      acc("readTimeMs"),
      acc("bridgeTimeMs"),
      acc("preprocessTimeMs"),
      acc("forwardTimeMs"),
      acc("decodeTimeMs"),
      acc("resizeTimeMs"),
      acc("truncatedRows"),
      acc("queueTimeMs"),
      acc("waitTimeMs"),
      acc("engineBatches"),
      acc("engineBatchRows"),
      acc("rowsIn"),
      acc("rowsOut")
    )
  }
}

/** Where native code says a batch's time went (nanoseconds, from the result's schema metadata). */
private[torchspark] final case class StageNanos(
    preprocess: Long,
    forward: Long,
    decode: Long,
    resize: Long,
    truncatedRows: Long = 0L,
    queue: Long = 0L,
    batchRows: Long = 0L,
    batchJobs: Long = 0L
)

/** One task's stage clocks, in nanoseconds, added to the accumulators once when it ends (adding per
  * batch would round every batch down to whole milliseconds).
  */
private[torchspark] final class StageClock(metrics: TorchSparkMetrics) {
  var read, bridge, native, preprocess, forward, decode, resize = 0L
  // The engine's share: queue wait (native), time blocked in collect (JVM), forward passes and
  // their summed rows.
  var queue, blocked, batches, batchRows = 0L
  private var flushed = false

  def flush(): Unit = if (!flushed) {
    flushed = true
    val ms = (ns: Long) => ns / 1000000L
    metrics.readTimeMs.add(ms(read))
    metrics.bridgeTimeMs.add(ms(bridge))
    metrics.nativeTimeMs.add(ms(native))
    metrics.preprocessTimeMs.add(ms(preprocess))
    metrics.forwardTimeMs.add(ms(forward))
    metrics.decodeTimeMs.add(ms(decode))
    metrics.resizeTimeMs.add(ms(resize))
    metrics.queueTimeMs.add(ms(queue))
    metrics.waitTimeMs.add(ms(blocked))
    metrics.engineBatches.add(batches)
    metrics.engineBatchRows.add(batchRows)
  }
}
