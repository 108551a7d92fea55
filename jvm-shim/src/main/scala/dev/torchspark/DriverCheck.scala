package dev.torchspark

import java.io.{File, IOException}
import java.nio.charset.StandardCharsets
import java.nio.file.Files

import scala.util.Try

import org.apache.hadoop.fs.{Path => HPath}
import org.apache.spark.sql.SparkSession

/** What the driver can know about a model, checked in `transform` / `register` before any task runs
  * (see docs/errors.md). Throws the [[TorchSparkException]] subclass a task would throw.
  *
  *   - Local mode (`local`, `local[N]`, `local[N,F]`): the driver JVM is the executor, so the model
  *     is opened here exactly as a task opens it (the spec's full validation, the device, the
  *     precision, a pinned sha256, libtorch). The process registry keeps it loaded; the tasks reuse
  *     it, so nothing is loaded twice.
  *   - Otherwise the driver loads no model: the model must exist (a cluster-storage URI is stat'ed;
  *     a local path or `--files` name is checked when the driver has a copy, since it may exist on
  *     the nodes only) and its spec must pass the native `describe` (the library, not a model: the
  *     transformers and SQL build their schemas from it anyway). The rest (the model file itself,
  *     the device) is validated where the model loads.
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

  /** The spec `text` as the native side validates it (`describe`: every rule of either version,
    * without loading the model); `where` names the file in messages.
    */
  def checkSpec(where: String, text: String): Unit = {
    ModelSchema.of(text, TaskPipeline.Predict, where)
    ()
  }
}
