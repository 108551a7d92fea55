package org.apache.spark.sql.torchspark

import scala.reflect.ClassTag

import org.apache.spark.rdd.RDD
import org.apache.spark.sql.{ExperimentalMethods, SparkSession}
import org.apache.spark.sql.catalyst.analysis.FunctionRegistry

/** What torchspark's SQL support needs from Spark that is `private[sql]` or `private[spark]` (this
  * package sits inside `sql` for that). One file for both lines: Spark 3.5 and 4.1 agree on all of
  * it. What a line does differently goes in its own folder, src/main/spark-<line>/
  * (jvm-shim/pom.xml adds it by profile; today only 4.1's Spark Connect service list).
  */
object Compat {

  /** The session's function registry, where SQL functions are registered. */
  def functionRegistry(spark: SparkSession): FunctionRegistry = spark.sessionState.functionRegistry

  /** The session's extra optimizer rules and planner strategies. */
  def experimental(spark: SparkSession): ExperimentalMethods = spark.experimental

  /** `rdd.mapPartitionsInternal(f)` (`private[spark]`): what Spark's own physical nodes use, with
    * no closure cleaning and partitioning kept.
    */
  def mapPartitionsInternal[T, U: ClassTag](rdd: RDD[T])(f: Iterator[T] => Iterator[U]): RDD[U] =
    rdd.mapPartitionsInternal(f, preservesPartitioning = false)
}
