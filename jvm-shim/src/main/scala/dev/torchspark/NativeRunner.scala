package dev.torchspark

import java.io.File
import java.util.concurrent.atomic.AtomicLong

import org.apache.spark.{SparkFiles, TaskContext}
import org.apache.spark.sql.{DataFrame, Encoders, Row}
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
        s"model file $path not found on this node (nor shipped as ${f.getName} with --files " +
          "or SparkContext.addFile)"
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

  def configJson(path: String, device: String, threads: Int, precision: String): String =
    s"""{"model_path": ${json(resolveModel(path))}, "device": ${json(device)}, """ +
      s""""num_threads": $threads, "precision": ${json(precision)}}"""

  private val reportedLoads = new AtomicLong(0)

  /** Loads since the last report, so that concurrent tasks count each load once. */
  def newLoads(): Long = {
    val now = NativeBridge.loadCount()
    math.max(0L, now - reportedLoads.getAndSet(now))
  }

  /** Opens a handle for this task and closes it when the task completes. */
  def openForTask(config: String, metrics: TorchSparkMetrics): Long = {
    val handle = NativeBridge.openModel(config)
    metrics.modelLoads.add(newLoads())
    Option(TaskContext.get()).foreach { ctx =>
      ctx.addTaskCompletionListener[Unit](_ => NativeBridge.closeModel(handle))
    }
    handle
  }

  def threadsFor(numThreads: Int): Int =
    if (numThreads > 0) numThreads else Option(TaskContext.get()).map(_.cpus()).getOrElse(1).max(1)

  /** Batches each partition's rows, calls native code once per batch, and appends the outputs in
    * row order; `decode` turns a native result into per-row outputs or an error.
    */
  def transform(
      df: DataFrame,
      p: TorchSparkParams,
      outSchema: StructType,
      metrics: TorchSparkMetrics,
      nativeCall: (Long, Array[Byte], String) => Array[Byte],
      decode: Array[Byte] => Array[Either[String, Seq[Any]]],
      nullOutputs: Seq[Any],
      optionsExtra: String
  ): DataFrame = {
    val inIdx = df.schema.fieldIndex(p.getInputCol)
    val kind = InputKind.of(p.getInputCol, df.schema(inIdx).dataType)
    val pathIdx = if (df.columns.contains("path")) Some(df.schema.fieldIndex("path")) else None
    val (modelPath, device, numThreads, precision) =
      (p.getModelPath, p.getDevice, p.getNumThreads, p.getPrecision)
    val (batchSize, mode) = (p.getBatchSize, p.getHandleInvalid)
    df.mapPartitions { rows: Iterator[Row] =>
      val config = configJson(modelPath, device, threadsFor(numThreads), precision)
      val handle = openForTask(config, metrics)
      val partition = Option(TaskContext.get()).map(_.partitionId()).getOrElse(0)
      var offset = 0L
      rows.grouped(batchSize).flatMap { group =>
        val values = group.map(r => r.get(inIdx): Any).toArray
        val options = s"""{"batch_size": $batchSize, "row_offset": $offset$optionsExtra}"""
        val t0 = System.nanoTime()
        val result = decode(nativeCall(handle, ArrowCodec.encode(kind, values), options))
        metrics.nativeTimeMs.add((System.nanoTime() - t0) / 1000000)
        offset += group.size
        group.iterator.zip(result.iterator).flatMap {
          case (row, Right(outputs)) =>
            metrics.imagesScored.add(1)
            Some(Row.fromSeq(row.toSeq ++ outputs ++ (if (mode == "keep") Seq(null) else Nil)))
          case (row, Left(error)) =>
            metrics.rowsWithErrors.add(1)
            val where = pathIdx.map(i => s" (path ${row.get(i)})").getOrElse("")
            mode match {
              case "error" =>
                throw new InputException(s"torchspark: partition $partition, $error$where")
              case "skip" =>
                metrics.rowsSkipped.add(1)
                None
              case _ => Some(Row.fromSeq(row.toSeq ++ nullOutputs :+ error))
            }
        }
      }
    }(Encoders.row(outSchema))
  }
}
