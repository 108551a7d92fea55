package dev.torchspark

import org.apache.spark.sql.SparkSessionExtensions

import dev.torchspark.sql.{ExtractTorchCalls, TorchEvalStrategy}

/** `spark.sql.extensions=dev.torchspark.TorchSparkExtensions`: the batched plan of model calls in
  * every session (Spark Connect servers, dbt), without `TorchSpark.register` installing it. The
  * rule is idempotent, so both ways coexist.
  */
class TorchSparkExtensions extends (SparkSessionExtensions => Unit) {
  override def apply(ext: SparkSessionExtensions): Unit = {
    ext.injectOptimizerRule(_ => ExtractTorchCalls)
    ext.injectPlannerStrategy(_ => TorchEvalStrategy)
  }
}
