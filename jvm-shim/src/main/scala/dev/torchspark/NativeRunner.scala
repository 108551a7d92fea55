package dev.torchspark

import java.io.File
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicLong

import scala.util.control.NonFatal

import org.apache.spark.{SparkFiles, TaskContext}
import org.apache.spark.sql.{DataFrame, Encoders, Row}
import org.apache.spark.sql.catalyst.expressions.GenericRow
import org.apache.spark.sql.types.StructType

/** Executor-side plumbing shared by the transformers and the UDFs. */
private[torchspark] object NativeRunner {

  /** A local path, or the name of a file shipped with --files / SparkContext.addFile. */
  def resolveModel(path: String): String = {
    val local = if (path.startsWith("file:")) new java.net.URI(path).getPath else path
    val f = new File(local)
    if (f.isFile) return f.getAbsolutePath
    val shipped =
      try Option(SparkFiles.get(f.getName)).map(new File(_)).filter(_.isFile)
      catch { case _: Exception => None }
    shipped.map(_.getAbsolutePath).getOrElse {
      throw new ModelLoadException(
        s"model file $path not found on host ${NativeLoader.hostName()} (nor shipped as " +
          s"${f.getName} with --files or SparkContext.addFile)"
      )
    }
  }

  def json(s: String): String = {
    val sb = new StringBuilder("\"")
    s.foreach {
      case '"'          => sb.append("\\\"")
      case '\\'         => sb.append("\\\\")
      case c if c < ' ' => sb.append(f"\\u${c.toInt}%04x")
      case c            => sb.append(c)
    }
    sb.append('"').toString
  }

  /** The native ModelConfig for a local path or a `--files` name (the default engine). */
  def configJson(path: String, device: String, threads: Int, precision: String): String =
    configFor(resolveModel(path), device, threads, precision, EngineSettings.default)

  /** The native ModelConfig for a model source (fetched into the node cache when remote). */
  def configJson(source: ModelSource, device: String, threads: Int, precision: String): String =
    configFor(source.localPath(), device, threads, precision, EngineSettings.default)

  /** The native ModelConfig for a model source with the transformer's engine settings. */
  def configJson(
      source: ModelSource,
      device: String,
      threads: Int,
      precision: String,
      engine: EngineSettings
  ): String = configFor(source.localPath(), device, threads, precision, engine)

  /** `device` resolved for this task (ExecutorCores.gpuDevice), and the engine sized from this
    * executor's cores and the task's cpus (ExecutorCores); `numThreads` > 0 fixes each engine
    * worker's threads.
    */
  private def configFor(
      local: String,
      device: String,
      threads: Int,
      precision: String,
      engine: EngineSettings
  ): String = {
    val perWorker =
      if (engine.numThreads > 0) s""", "threads_per_worker": ${engine.numThreads}""" else ""
    s"""{"model_path": ${json(local)}, "device": ${json(ExecutorCores.deviceForTask(device))}, """ +
      s""""num_threads": $threads, "precision": ${json(precision)}, """ +
      s""""engine": {"mode": ${json(engine.mode)}, "cores": ${ExecutorCores.cores}, """ +
      s""""task_cpus": ${ExecutorCores.taskCpus}, "timeout_ms": ${engine.timeoutMs}$perWorker}}"""
  }

  private val reportedLoads = new AtomicLong(0)

  /** Loads since the last report, so that concurrent tasks count each load once. */
  def newLoads(): Long = {
    val now = NativeBridge.loadCount()
    math.max(0L, now - reportedLoads.getAndSet(now))
  }

  /** NativeBridge.openModel, whose failures (this node's files, GPU, libtorch) name the host. Logs
    * the model's load or reload and, once per configuration, the engine's (docs/logging.md).
    */
  def openModel(config: String): Long = {
    val before = NativeBridge.loadCount()
    val t0 = System.nanoTime()
    val handle =
      try NativeBridge.openModel(config)
      catch { case e: TorchSparkException => throw onHost(e) }
    logOpen(config, handle, NativeBridge.loadCount() > before, t0)
    handle
  }

  // Per local model path: the identity (model and spec length and mtime) this JVM last logged.
  private val seenModels = new ConcurrentHashMap[String, String]()
  // Engine configurations already logged by this JVM.
  private val loggedEngines = ConcurrentHashMap.newKeySet[String]()
  private lazy val mapper = new com.fasterxml.jackson.databind.ObjectMapper()

  /** What the native registry compares (docs/model-cache.md): length, times, inode. */
  private def identity(f: File): String =
    try {
      val a = java.nio.file.Files
        .readAttributes(f.toPath, "unix:size,lastModifiedTime,ctime,ino")
      s"${a.get("size")} bytes, modified ${a.get("lastModifiedTime")}, changed ${a.get("ctime")}, " +
        s"inode ${a.get("ino")}"
    } catch { case NonFatal(_) => "unreadable" }

  /** A load (the first in this JVM, or a reload because the file or spec changed) at INFO; an open
    * of a model already loaded at DEBUG (one per task, never per batch).
    */
  private def logOpen(config: String, handle: Long, loaded: Boolean, t0: Long): Unit =
    try {
      val path = mapper.readTree(config).path("model_path").asText("")
      val f = new File(path)
      val now = s"${identity(f)}; spec ${identity(new File(ModelSource.specOf(path)))}"
      val host = NativeLoader.hostName()
      val took = Logs.seconds(t0)
      Option(seenModels.put(path, now)) match {
        case None if loaded =>
          Logs.model.info(s"loaded model $path (${f.length()} bytes) in $took s on host $host")
        case None =>
          Logs.model.info(s"opened model $path (${f.length()} bytes; already loaded in this JVM)")
        case Some(before) if before != now || loaded =>
          Logs.model.info(
            s"reloaded model $path in $took s on host $host: it changed on disk (was $before; " +
              s"now $now)"
          )
        case Some(_) =>
          Logs.model.debug(s"model $path: already loaded in this JVM (open took $took s)")
      }
      if (loggedEngines.add(config))
        Logs.engine.info(
          s"engine for $path on host $host: config $config; engine ${NativeBridge.engineStats(handle)}"
        )
    } catch {
      // Logging must never fail a task.
      case NonFatal(e) => Logs.model.debug(s"cannot log the open of $config", e)
    }

  /** The same exception class with " (on host H)" after its message; `e` is the cause. */
  private def onHost(e: TorchSparkException): TorchSparkException = {
    val m = s"${e.getMessage} (on host ${NativeLoader.hostName()})"
    e match {
      case _: ModelLoadException => new ModelLoadException(m, e)
      case _: ModelSpecException => new ModelSpecException(m, e)
      case _: ConfigException    => new ConfigException(m, e)
      case _: DeviceException    => new DeviceException(m, e)
      case _: InputException     => new InputException(m, e)
      case _: InferenceException => new InferenceException(m, e)
      case _                     => new TorchSparkException(m, e)
    }
  }

  /** Opens a handle for this task and closes it when the task completes. A close that races a call
    * on the handle (another thread of the task, a listener of a killed task) is safe: the native
    * side keeps the model until the call returns, and later calls throw a ConfigException naming
    * the handle (docs/engine.md, "Lifecycle").
    */
  def openForTask(config: String, metrics: TorchSparkMetrics): Long = {
    val handle = openModel(config)
    metrics.modelLoads.add(newLoads())
    Option(TaskContext.get()).foreach { ctx =>
      ctx.addTaskCompletionListener[Unit](_ => NativeBridge.closeModel(handle))
    }
    handle
  }

  def threadsFor(numThreads: Int): Int =
    if (numThreads > 0) numThreads else Option(TaskContext.get()).map(_.cpus()).getOrElse(1).max(1)

  /** `row` with the columns at `idx` null: a row over the byte bound, as it is sent. */
  private def nulled(row: Row, idx: Array[Int]): Row = {
    val values = new Array[Any](row.length)
    var i = 0
    while (i < values.length) { values(i) = row.get(i); i += 1 }
    idx.foreach(values(_) = null)
    new GenericRow(values)
  }

  /** `row`'s values, then `outputs`, then `error` when `withError`: one copy into a new row. */
  private def appended(row: Row, outputs: Seq[Any], withError: Boolean, error: String): Row = {
    val w = row.length
    val values = new Array[Any](w + outputs.size + (if (withError) 1 else 0))
    var i = 0
    while (i < w) { values(i) = row.get(i); i += 1 }
    outputs.copyToArray(values, w)
    if (withError) values(values.length - 1) = error
    new GenericRow(values)
  }

  /** Groups each partition's rows, runs each group through native code (the `preset`'s outputs:
    * score, featurize, predict or embed; through the shared engine or per task, TaskPipeline) and
    * appends the outputs in row order; `encode` turns a group of rows into the native call's Arrow
    * input (it reads `inputColumns`), `decode` turns a native result into per-row outputs or an
    * error. A group is at most `callBatches` forward passes of `batchSize` rows (batchSize 0: the
    * model's NativeBridge.autoBatchSize, on the executor) and at most
    * `spark.torchspark.maxBytesPerCall` bytes of `inputColumns` (RowGroups); a row over that alone
    * is a row error.
    *
    * Every row is accounted for: `rowsIn` = `rowsOut` + `rowsSkipped`; a partition that skipped or
    * kept bad rows logs one warning (naming the transformer `who`) with the count and the first
    * reason.
    */
  def transform(
      df: DataFrame,
      p: TorchSparkModelParams,
      outSchema: StructType,
      metrics: TorchSparkMetrics,
      preset: String,
      who: String,
      inputColumns: Seq[String],
      encode: Seq[Row] => Array[Byte],
      decode: Array[Byte] => Array[Either[String, Seq[Any]]],
      nullOutputs: Seq[Any],
      optionsExtra: String,
      callBatches: Int = 1
  ): DataFrame = {
    val pathIdx = if (df.columns.contains("path")) Some(df.schema.fieldIndex("path")) else None
    val (device, numThreads, precision) = (p.getDevice, p.getNumThreads, p.getPrecision)
    // What the driver can know (the model, its spec, the device) fails here, before the job.
    val source = ModelSource(df.sparkSession, p.getModelPath)
    DriverCheck(df.sparkSession, source, device, precision)
    val (batchParam, mode) = (p.getBatchSize, p.getHandleInvalid)
    val engine = EngineSettings(p.getEngine, p.getEngineTimeoutMs, numThreads)
    val maxPixels = p.getMaxPixels
    val maxBytes = RowGroups.limit(df.sparkSession)
    val inputIdx = inputColumns.map(df.schema.fieldIndex).toArray
    val names = IndexedSeq(inputColumns.toIndexedSeq)
    // The limits of docs/limits.md (0: the spec's or the engine's).
    val limits = s""", "max_row_elements": ${p.getMaxRowElements}, "max_batch_bytes": """ +
      s"""${p.getMaxBatchBytes}, "max_text_bytes": ${p.getMaxTextBytes}"""
    df.mapPartitions { input: Iterator[Row] =>
      val config = configJson(source, device, threadsFor(numThreads), precision, engine)
      val handle = openForTask(config, metrics)
      val clock = new StageClock(metrics)
      val ctx = Option(TaskContext.get())
      ctx.foreach(_.addTaskCompletionListener[Unit](_ => clock.flush()))
      val partition = ctx.map(_.partitionId()).getOrElse(0)
      val batchSize = if (batchParam > 0) batchParam else NativeBridge.autoBatchSize(handle).max(1)
      val perCall = math.min(callBatches.toLong * batchSize, Int.MaxValue.toLong).toInt
      // Time spent pulling rows from upstream (the file reads, for binaryFile).
      val rows = new Iterator[Row] {
        def hasNext: Boolean = {
          val t = System.nanoTime(); val h = input.hasNext; clock.read += System.nanoTime() - t
          if (!h && ctx.isEmpty) clock.flush()
          h
        }
        def next(): Row = {
          val t = System.nanoTime(); val r = input.next(); clock.read += System.nanoTime() - t; r
        }
      }
      // Groups bounded by rows and bytes; each knows its first row's offset in the partition,
      // for the row numbers in errors.
      val weigh = (r: Row, _: Int) => {
        var sum = 0L
        var c = 0
        while (c < inputIdx.length) { sum += TensorCodec.bytesOf(r.get(inputIdx(c))); c += 1 }
        sum
      }
      val columns = (r: Row, _: Int) => inputIdx.map(i => TensorCodec.bytesOf(r.get(i)))
      val groups = RowGroups[Row](rows, perCall, maxBytes, names, weigh, columns)
      // This partition's bad rows, for its one warning.
      val bad = new PartitionErrors(who, partition, mode)
      ctx.foreach(_.addTaskCompletionListener[Unit](_ => bad.log()))
      val pipeline =
        new TaskPipeline(handle, preset, engine.shared, engine.timeoutMs, Some(clock), ctx)
      pipeline
        .run[RowGroup[Row]](
          groups,
          // A row over the byte bound goes as nulls (its row error comes from here, below).
          g =>
            encode(
              g.rows.indices
                .map(i => if (g.over(i).isEmpty) g.rows(i) else nulled(g.rows(i), inputIdx))
            ),
          g =>
            s"""{"batch_size": $batchSize, "row_offset": ${g.first}, "max_pixels": $maxPixels""" +
              s"""$limits$optionsExtra}""",
          g => g.size
        )
        .flatMap { case (g, answer) =>
          val group = g.rows
          val t2 = System.nanoTime()
          val stages = ArrowCodec.stageNanos(answer)
          val result = decode(answer)
          if (result.length != group.size)
            throw new InferenceException(
              s"torchspark: partition $partition: native code returned ${result.length} rows for " +
                s"${group.size}"
            )
          var scored = 0L
          val out = group.indices.iterator.flatMap { i =>
            val row = group(i)
            val outcome = g.over(i) match {
              case Some(o) => Left(o.message(g.first + i, maxBytes))
              case None    => result(i)
            }
            outcome match {
              case Right(outputs) =>
                scored += 1
                Some(appended(row, outputs, mode == "keep", null))
              case Left(error) =>
                metrics.rowsWithErrors.add(1)
                val where = pathIdx.map(c => s" (path ${row.get(c)})").getOrElse("")
                bad.add(s"$error$where")
                mode match {
                  case "error" =>
                    throw new InputException(s"torchspark: partition $partition, $error$where")
                  case "skip" =>
                    metrics.rowsSkipped.add(1)
                    None
                  case _ => Some(appended(row, nullOutputs, true, error))
                }
            }
          }.toArray
          metrics.rowsIn.add(group.size.toLong)
          metrics.rowsOut.add(out.length.toLong)
          bad.rows += group.size
          metrics.rowsScored.add(scored)
          if (stages.truncatedRows > 0) metrics.truncatedRows.add(stages.truncatedRows)
          clock.preprocess += stages.preprocess
          clock.forward += stages.forward
          clock.decode += stages.decode
          clock.resize += stages.resize
          clock.queue += stages.queue
          // One job per forward pass of batchSize rows; without engine metadata (per task) each
          // pass holds only this group's rows.
          clock.batches += (group.size + batchSize - 1) / batchSize
          clock.batchRows += (if (stages.batchRows > 0) stages.batchRows else group.size.toLong)
          clock.bridge += System.nanoTime() - t2
          out.iterator
        }
    }(Encoders.row(outSchema))
  }
}

/** A transformer's engine params as the executor needs them: `mode` "shared" or "per-task",
  * `timeoutMs` (engineTimeoutMs), `numThreads` (> 0: each engine worker's threads).
  */
private[torchspark] final case class EngineSettings(
    mode: String,
    timeoutMs: Long,
    numThreads: Int
) {
  def shared: Boolean = mode == "shared"
}

private[torchspark] object EngineSettings {
  val default: EngineSettings = EngineSettings("shared", 600000L, 0)
}

/** One partition's rows with errors, logged once when its task ends (never per row): how many of
  * how many rows, what `handleInvalid` did with them, and the first reason.
  */
private[torchspark] final class PartitionErrors(who: String, partition: Int, mode: String) {
  var rows = 0L
  private var errors = 0L
  private var first: String = _

  def add(error: String): Unit = {
    if (first == null) first = error
    errors += 1
  }

  def log(): Unit = if (errors > 0 && mode != "error") {
    val did = if (mode == "skip") "skipped" else "kept with their reason in errorCol"
    PartitionErrors.log.warn(
      s"$who: partition $partition: $errors of $rows rows could not be scored and " +
        s"were $did (handleInvalid=$mode); the first: $first"
    )
  }
}

private[torchspark] object PartitionErrors {
  val log: org.slf4j.Logger = org.slf4j.LoggerFactory.getLogger("dev.torchspark")
}
