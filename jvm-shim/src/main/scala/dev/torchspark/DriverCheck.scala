package dev.torchspark

import java.io.{File, IOException}
import java.nio.charset.StandardCharsets
import java.nio.file.Files

import scala.util.Try

import com.fasterxml.jackson.core.JsonProcessingException
import com.fasterxml.jackson.databind.{JsonNode, ObjectMapper}
import org.apache.hadoop.fs.{Path => HPath}
import org.apache.spark.sql.SparkSession

/** What the driver can know about a model, checked in `transform` / `register` before any task runs
  * (see docs/errors.md). Throws the [[TorchSparkException]] subclass a task would throw.
  *
  *   - Local mode (`local`, `local[N]`, `local[N,F]`): the driver JVM is the executor, so the model
  *     is opened here exactly as a task opens it (the spec's full validation, the device, the
  *     precision, a pinned sha256, libtorch). The process registry keeps it loaded; the tasks reuse
  *     it, so nothing is loaded twice.
  *   - Otherwise the driver needs no libtorch: the model must exist (a cluster-storage URI is
  *     stat'ed; a local path or `--files` name is checked when the driver has a copy, since it may
  *     exist on the nodes only) and its spec must be readable JSON with an `input` object whose
  *     `height` and `width` are positive integers (a version-2 spec is described natively by
  *     TorchModel and SQL instead). The rest is validated where the model loads.
  */
private[torchspark] object DriverCheck {

  /** `cpu`, `cuda` or `cuda:N` (the rule of TorchSparkParams.device and of the native side). */
  def checkDevice(device: String): Unit =
    if (device == null || !(device == "cpu" || device == "cuda" || device.matches("cuda:\\d+")))
      throw new DeviceException(s"device `$device`: expected `cpu`, `cuda` or `cuda:N`")

  /** Checks `source` with `device` and `precision`; throws before any job starts. */
  def apply(spark: SparkSession, source: ModelSource, device: String, precision: String): Unit = {
    checkDevice(device)
    source.check() // a cluster-storage model and its spec: stat'ed
    if (spark.sparkContext.isLocal) {
      val handle = NativeRunner.openModel(NativeRunner.configJson(source, device, 1, precision))
      NativeBridge.closeModel(handle)
    } else if (source.isRemote) {
      val spec = ModelSource.specOf(source.path)
      checkSpec(spec, readRemote(spark, spec))
    } else {
      // A model that only the executors have is theirs to report.
      Try(NativeRunner.resolveModel(source.path)).toOption.foreach { model =>
        val spec = new File(ModelSource.specOf(model))
        val text =
          try new String(Files.readAllBytes(spec.toPath), StandardCharsets.UTF_8)
          catch {
            case e: IOException =>
              throw new ModelSpecException(s"model spec $spec: cannot read: $e", e)
          }
        checkSpec(spec.toString, text)
      }
    }
  }

  private def readRemote(spark: SparkSession, uri: String): String = {
    val p = new HPath(uri)
    try {
      val in = p.getFileSystem(ModelSource.hadoopConf(spark)).open(p)
      try new String(in.readAllBytes(), StandardCharsets.UTF_8)
      finally in.close()
    } catch {
      case e: IOException => throw new ModelSpecException(s"model spec $uri: cannot read: $e", e)
    }
  }

  private val mapper = new ObjectMapper()

  /** The spec's JSON shape as far as the JVM checks it; `where` names the file in messages. */
  def checkSpec(where: String, text: String): Unit = {
    def bad(reason: String) = new ModelSpecException(s"model spec $where: $reason")
    val root: JsonNode =
      try mapper.readTree(text)
      catch {
        case e: JsonProcessingException =>
          val at = Option(e.getLocation)
            .map(l => s" at line ${l.getLineNr}, column ${l.getColumnNr}")
            .getOrElse("")
          throw bad(s"not JSON: ${e.getOriginalMessage}$at")
      }
    if (root == null || !root.isObject) throw bad("must be a JSON object")
    // A general spec (version 2): TorchModel and SQL validate it on the driver with
    // NativeBridge.describe, which knows all of its rules.
    if (Option(root.get("spec_version")).exists(v => v.isIntegralNumber && v.asInt >= 2)) return
    val input = root.get("input")
    if (input == null || !input.isObject)
      throw bad("missing field `input` (an object with height and width)")
    Seq("height", "width").foreach { f =>
      val v = input.get(f)
      if (v == null || !v.canConvertToInt || !v.isIntegralNumber || v.asInt <= 0)
        throw bad(s"input.$f must be a positive integer")
    }
  }
}
