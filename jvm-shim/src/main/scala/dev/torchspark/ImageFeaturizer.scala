package dev.torchspark

import org.apache.spark.ml.Transformer
import org.apache.spark.ml.linalg.{SQLDataTypes, Vectors}
import org.apache.spark.ml.param._
import org.apache.spark.ml.util.{DefaultParamsReadable, DefaultParamsWritable, Identifiable}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.types._

/** Embeds images with the spec's featurize output (a method such as `features`, or one element of
  * forward's tuple) into `outputCol`, an ML Vector that Spark ML estimators train on directly.
  */
class ImageFeaturizer(override val uid: String)
    extends Transformer
    with TorchSparkParams
    with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("ImageFeaturizer"))

  final val outputCol: Param[String] =
    new Param[String](this, "outputCol", "the embedding (ML Vector)")

  setDefault(outputCol -> "features")

  def setOutputCol(v: String): this.type = set(outputCol, v)

  def getOutputCol: String = $(outputCol)

  override def transformSchema(schema: StructType): StructType =
    withOutputs(schema, Seq(StructField(getOutputCol, SQLDataTypes.VectorType)))

  override def transform(dataset: Dataset[_]): DataFrame = {
    val schema = transformSchema(dataset.schema, logging = true)
    val df = dataset.toDF()
    val metrics = newMetrics(df)
    val decode = (bytes: Array[Byte]) =>
      ArrowCodec.decodeFeatures(bytes).map { case (f, error) =>
        // Typed once here: Scala 2.12's Array.map takes no explicit result type.
        val out: Either[String, Seq[Any]] =
          if (error != null) Left(error) else Right(Seq(Vectors.dense(f)))
        out
      }
    NativeRunner.transform(
      df,
      this,
      schema,
      metrics,
      TaskPipeline.Featurize,
      Seq(getInputCol),
      NativeRunner.imageInput(df, getInputCol),
      decode,
      Seq(null),
      ""
    )
  }

  override def copy(extra: ParamMap): ImageFeaturizer = defaultCopy(extra)
}

object ImageFeaturizer extends DefaultParamsReadable[ImageFeaturizer]
