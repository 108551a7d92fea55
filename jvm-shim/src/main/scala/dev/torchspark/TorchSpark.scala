package dev.torchspark

import java.util.concurrent.ConcurrentHashMap

import org.apache.spark.sql.{Row, SparkSession}
import org.apache.spark.sql.api.java.UDF1
import org.apache.spark.sql.types._

/** Entry points for SQL users and for checking the native side from a driver. */
object TorchSpark {

  /** Result type of the scoring UDF. */
  val scoreType: StructType = StructType(
    Seq(
      StructField("prediction", IntegerType),
      StructField("label", StringType),
      StructField("probability", ArrayType(DoubleType, containsNull = false)),
      StructField("error", StringType)
    )
  )

  // One handle per (config) per executor JVM for the UDFs: they are called row by row, from
  // any task thread; a Scorer is shareable between threads, so handles live for the JVM.
  private val udfHandles = new ConcurrentHashMap[String, java.lang.Long]()

  private def handle(config: String): Long =
    udfHandles.computeIfAbsent(config, c => java.lang.Long.valueOf(NativeBridge.openModel(c)))

  /** Registers `name` (binary image → struct<prediction, label, probability, error>) and
    * `name_features` (binary image → array<double>, null for a bad row) for SQL:
    * {{{SELECT classify_image(content).label FROM images}}} Rows are scored one at a time; the
    * transformers batch and are much faster.
    */
  def register(
      spark: SparkSession,
      name: String,
      modelPath: String,
      device: String = "cpu",
      numThreads: Int = 1
  ): Unit = {
    val path = modelPath
    val score: UDF1[Array[Byte], Row] = (content: Array[Byte]) => {
      val s =
        ArrowCodec.decodeScores(call(path, device, numThreads, content, NativeBridge.score))(0)
      if (s.error != null) Row(null, null, null, s.error)
      else Row(s.prediction, s.label, s.probability.toSeq, null)
    }
    spark.udf.register(name, score, scoreType)
    val features: UDF1[Array[Byte], Seq[Double]] = (content: Array[Byte]) => {
      val (f, _) =
        ArrowCodec.decodeFeatures(call(path, device, numThreads, content, NativeBridge.featurize))(
          0
        )
      if (f == null) null else f.toSeq
    }
    spark.udf.register(s"${name}_features", features, ArrayType(DoubleType, containsNull = false))
  }

  private def call(
      path: String,
      device: String,
      threads: Int,
      content: Array[Byte],
      native: (Long, Array[Byte], String) => Array[Byte]
  ): Array[Byte] = {
    val config = NativeRunner.configJson(path, device, threads, "fp32")
    native(
      handle(config),
      ArrowCodec.encode(InputKind.Binary, Array[Any](content)),
      """{"top_k": 1}"""
    )
  }

  /** Models loaded from disk by this JVM (on the driver in local mode: every executor). */
  def nativeModelLoads(): Long = NativeBridge.loadCount()
}
