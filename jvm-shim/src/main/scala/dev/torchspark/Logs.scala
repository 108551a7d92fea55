package dev.torchspark

import org.slf4j.{Logger, LoggerFactory}

/** torchspark's loggers (slf4j, which Spark binds to its log4j2; docs/logging.md). Lifecycle events
  * only: the library, each model's resolution, fetch and load, the engine's configuration. Nothing
  * is logged per row or per batch.
  */
private[torchspark] object Logs {

  /** libtorchspark and libtorch: found, loaded, from where (once per JVM; NativeLoader). */
  val native: Logger = NativeLoader.LOG

  /** Models: resolved on the driver, fetched into the node cache, loaded, reloaded, refused. */
  val model: Logger = LoggerFactory.getLogger("dev.torchspark.model")

  /** The engine's configuration, once per model and configuration per JVM. */
  val engine: Logger = LoggerFactory.getLogger("dev.torchspark.engine")

  /** Seconds since `t0` (System.nanoTime), as log lines show them. */
  def seconds(t0: Long): String =
    "%.2f".formatLocal(java.util.Locale.ROOT, (System.nanoTime() - t0) / 1e9)
}
