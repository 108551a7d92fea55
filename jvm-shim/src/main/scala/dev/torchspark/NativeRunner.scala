package dev.torchspark

import java.io.File
import java.util.concurrent.atomic.AtomicLong

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

  /** The native ModelConfig for a local path or a `--files` name. */
  def configJson(path: String, device: String, threads: Int, precision: String): String =
    configFor(resolveModel(path), device, threads, precision)

  /** The native ModelConfig for a model source (fetched into the node cache when remote). */
  def configJson(source: ModelSource, device: String, threads: Int, precision: String): String =
    configFor(source.localPath(), device, threads, precision)

  private def configFor(local: String, device: String, threads: Int, precision: String): String =
    s"""{"model_path": ${json(local)}, "device": ${json(device)}, """ +
      s""""num_threads": $threads, "precision": ${json(precision)}}"""

  private val reportedLoads = new AtomicLong(0)

  /** Loads since the last report, so that concurrent tasks count each load once. */
  def newLoads(): Long = {
    val now = NativeBridge.loadCount()
    math.max(0L, now - reportedLoads.getAndSet(now))
  }

  /** NativeBridge.openModel, whose failures (this node's files, GPU, libtorch) name the host. */
  def openModel(config: String): Long =
    try NativeBridge.openModel(config)
    catch { case e: TorchSparkException => throw onHost(e) }

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

  /** Opens a handle for this task and closes it when the task completes. */
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

  /** The encoder of an image transformer's batches: the one column `column` of `df`. */
  def imageInput(df: DataFrame, column: String): Seq[Row] => Array[Byte] = {
    val idx = df.schema.fieldIndex(column)
    val kind = InputKind.of(column, df.schema(idx).dataType)
    rows => ArrowCodec.encode(kind, rows.map(r => r.get(idx): Any).toArray)
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

  /** Batches each partition's rows, calls native code once per batch, and appends the outputs in
    * row order; `encode` turns a batch of rows into the native call's Arrow input, `decode` turns a
    * native result into per-row outputs or an error. `rowsPerCall` (0: `batchSize`) rows go into
    * one native call, which runs them in forward passes of `batchSize` rows.
    */
  def transform(
      df: DataFrame,
      p: TorchSparkModelParams,
      outSchema: StructType,
      metrics: TorchSparkMetrics,
      nativeCall: (Long, Array[Byte], String) => Array[Byte],
      encode: Seq[Row] => Array[Byte],
      decode: Array[Byte] => Array[Either[String, Seq[Any]]],
      nullOutputs: Seq[Any],
      optionsExtra: String,
      rowsPerCall: Int = 0
  ): DataFrame = {
    val pathIdx = if (df.columns.contains("path")) Some(df.schema.fieldIndex("path")) else None
    val (device, numThreads, precision) = (p.getDevice, p.getNumThreads, p.getPrecision)
    // What the driver can know (the model, its spec, the device) fails here, before the job.
    val source = ModelSource(df.sparkSession, p.getModelPath)
    DriverCheck(df.sparkSession, source, device, precision)
    val (batchSize, mode) = (p.getBatchSize, p.getHandleInvalid)
    val perCall = if (rowsPerCall > 0) rowsPerCall else batchSize
    val maxPixels = p.getMaxPixels
    df.mapPartitions { input: Iterator[Row] =>
      val config = configJson(source, device, threadsFor(numThreads), precision)
      val handle = openForTask(config, metrics)
      val clock = new StageClock(metrics)
      val ctx = Option(TaskContext.get())
      ctx.foreach(_.addTaskCompletionListener[Unit](_ => clock.flush()))
      val partition = ctx.map(_.partitionId()).getOrElse(0)
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
      var offset = 0L
      rows.grouped(perCall).flatMap { group =>
        val t0 = System.nanoTime()
        val options =
          s"""{"batch_size": $batchSize, "row_offset": $offset, "max_pixels": $maxPixels$optionsExtra}"""
        val encoded = encode(group)
        val t1 = System.nanoTime()
        val answer = nativeCall(handle, encoded, options)
        val t2 = System.nanoTime()
        val stages = ArrowCodec.stageNanos(answer)
        val result = decode(answer)
        if (result.length != group.size)
          throw new InferenceException(
            s"torchspark: partition $partition: native code returned ${result.length} rows for " +
              s"${group.size}"
          )
        offset += group.size
        var scored = 0L
        val out = group.iterator
          .zip(result.iterator)
          .flatMap {
            case (row, Right(outputs)) =>
              scored += 1
              Some(appended(row, outputs, mode == "keep", null))
            case (row, Left(error)) =>
              metrics.rowsWithErrors.add(1)
              val where = pathIdx.map(i => s" (path ${row.get(i)})").getOrElse("")
              mode match {
                case "error" =>
                  throw new InputException(s"torchspark: partition $partition, $error$where")
                case "skip" =>
                  metrics.rowsSkipped.add(1)
                  None
                case _ => Some(appended(row, nullOutputs, true, error))
              }
          }
          .toArray
        metrics.imagesScored.add(scored)
        if (stages.truncatedRows > 0) metrics.truncatedRows.add(stages.truncatedRows)
        clock.native += t2 - t1
        clock.preprocess += stages.preprocess
        clock.forward += stages.forward
        clock.decode += stages.decode
        clock.resize += stages.resize
        clock.bridge += (t1 - t0) + (System.nanoTime() - t2)
        out.iterator
      }
    }(Encoders.row(outSchema))
  }
}
