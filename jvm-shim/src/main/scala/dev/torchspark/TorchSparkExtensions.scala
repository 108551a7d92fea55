package dev.torchspark

import org.apache.spark.sql.SparkSessionExtensions

import dev.torchspark.sql.{ConfFunctions, ExtractTorchCalls, TorchEvalStrategy}

/** `spark.sql.extensions=dev.torchspark.TorchSparkExtensions`: the batched plan of model calls in
  * every session (Spark Connect servers, the Thrift server, `spark-sql`, dbt), without
  * `TorchSpark.register` installing it (the rule is idempotent, so both ways coexist), and the SQL
  * functions of the application's configuration, `spark.torchspark.functions.<name>=<model>`
  * ([[dev.torchspark.sql.ConfFunctions]], docs/sql-functions.md).
  */
class TorchSparkExtensions extends (SparkSessionExtensions => Unit) {
  override def apply(ext: SparkSessionExtensions): Unit = {
    ext.injectOptimizerRule(_ => ExtractTorchCalls)
    ext.injectPlannerStrategy(_ => TorchEvalStrategy)
    ConfFunctions.inject(ext)
  }
}
