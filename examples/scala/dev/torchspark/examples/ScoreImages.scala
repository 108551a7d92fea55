package dev.torchspark.examples

import dev.torchspark.{ImageScorer, TorchSpark}
import org.apache.spark.ml.functions.vector_to_array
import org.apache.spark.sql.SparkSession
import org.apache.spark.sql.functions.{col, when}

/**
 * Scores every image under a directory and writes Parquet (path, prediction, label, probability).
 *
 * {{{
 * spark-submit --class dev.torchspark.examples.ScoreImages \
 *   --files model.pt,model.json torchspark-spark4.1_2.13-0.1.0.jar \
 *   <image dir> model.pt <output.parquet> [batchSize]
 * }}}
 * `model.pt` may be a cluster-storage URI (`hdfs://`, `abfs://`, `s3a://`, ...), a local path on
 * every node, or the name of a file shipped with --files. The images are read recursively, in a
 * few partitions per task slot (TorchSpark.readImages).
 */
object ScoreImages {
  def main(args: Array[String]): Unit = {
    dev.torchspark.SparkLineCheck.check() // a jar for another Spark line fails here, by name
    if (args.length < 3) {
      System.err.println("usage: ScoreImages <image dir> <model.pt> <output.parquet> [batchSize]")
      sys.exit(2)
    }
    val Array(images, model, output) = args.take(3)
    val batchSize = if (args.length > 3) args(3).toInt else 64
    val spark = SparkSession.builder().appName("torchspark-score-images").getOrCreate()
    val files = TorchSpark.readImages(spark, images)
    val scorer = new ImageScorer()
      .setModelPath(model)
      .setInputCol("content")
      .setBatchSize(batchSize)
      .setHandleInvalid("keep")
    scorer
      .transform(files)
      .select(
        col("path"),
        col("prediction").cast("int").as("prediction"),
        col("predictedLabel").as("label"),
        // A row that failed (handleInvalid=keep) has no probability; vector_to_array rejects null.
        when(col("probability").isNotNull, vector_to_array(col("probability"))).as("probability"),
        col("error"))
      .write
      .mode("overwrite")
      .parquet(output)
    println(s"torchspark: ${scorer.metrics}")
    spark.stop()
  }
}
