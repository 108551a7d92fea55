package dev.torchspark.sql

import org.apache.spark.sql.{SparkSession, SparkSessionExtensions}
import org.apache.spark.sql.catalyst.FunctionIdentifier
import org.apache.spark.sql.torchspark.Compat

/** Wires model calls into a session: the SQL names, the rule and the planner strategy. */
object TorchSql {

  /** Registers `fn` under its name: `name(args...)` builds a [[TorchCall]] (any argument count;
    * [[TorchCall.checkInputDataTypes]] checks it against the spec).
    */
  def registerFunction(spark: SparkSession, fn: TorchFunction): Unit = {
    Compat
      .functionRegistry(spark)
      .createOrReplaceTempFunction(fn.name, args => TorchCall(fn, args), "scala_udf")
    install(spark)
  }

  /** True when `name` is a registered temporary function of this session. */
  def isRegistered(spark: SparkSession, name: String): Boolean =
    Compat.functionRegistry(spark).functionExists(FunctionIdentifier(name))

  /** Appends [[ExtractTorchCalls]] to the session's extra optimizations and [[TorchEvalStrategy]]
    * to its extra strategies, once (they are per session, like the temporary functions).
    */
  def install(spark: SparkSession): Unit = synchronized {
    val x = Compat.experimental(spark)
    if (!x.extraOptimizations.contains(ExtractTorchCalls))
      x.extraOptimizations = x.extraOptimizations :+ ExtractTorchCalls
    if (!x.extraStrategies.contains(TorchEvalStrategy))
      x.extraStrategies = x.extraStrategies :+ TorchEvalStrategy
  }
}
