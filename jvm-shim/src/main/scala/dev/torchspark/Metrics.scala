package dev.torchspark

import org.apache.spark.SparkContext
import org.apache.spark.util.LongAccumulator

/** Counters of one transform, visible in the Spark UI (named accumulators) and readable after an
  * action: images scored, rows with errors, rows skipped, native time, model loads.
  */
final class TorchSparkMetrics private (
    val imagesScored: LongAccumulator,
    val rowsWithErrors: LongAccumulator,
    val rowsSkipped: LongAccumulator,
    val nativeTimeMs: LongAccumulator,
    val modelLoads: LongAccumulator
) extends Serializable {

  override def toString: String =
    s"TorchSparkMetrics(imagesScored=${imagesScored.value}, rowsWithErrors=${rowsWithErrors.value}, " +
      s"rowsSkipped=${rowsSkipped.value}, nativeTimeMs=${nativeTimeMs.value}, modelLoads=${modelLoads.value})"
}

object TorchSparkMetrics {
  private[torchspark] def apply(sc: SparkContext, name: String): TorchSparkMetrics = {
    def acc(what: String): LongAccumulator = sc.longAccumulator(s"torchspark.$name.$what")
    new TorchSparkMetrics(
      acc("imagesScored"),
      acc("rowsWithErrors"),
      acc("rowsSkipped"),
      acc("nativeTimeMs"),
      acc("modelLoads")
    )
  }
}
