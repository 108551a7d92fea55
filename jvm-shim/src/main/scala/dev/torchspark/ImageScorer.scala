package dev.torchspark

import org.apache.spark.ml.Transformer
import org.apache.spark.ml.linalg.{SQLDataTypes, Vectors}
import org.apache.spark.ml.param._
import org.apache.spark.ml.util.{DefaultParamsReadable, DefaultParamsWritable, Identifiable}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.types._

/** Scores images with a TorchScript classifier, natively, once-per-executor model.
  *
  * Adds `predictionCol` (double class index), `probabilityCol` (ML Vector), `predictedLabelCol`
  * (from the spec's labels), `topKCol` (array of index/label/probability) and, with
  * `handleInvalid=keep`, `errorCol`. Works with MulticlassClassificationEvaluator as is.
  */
class ImageScorer(override val uid: String)
    extends Transformer
    with TorchSparkParams
    with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("ImageScorer"))

  final val predictionCol: Param[String] =
    new Param[String](this, "predictionCol", "predicted class index (double)")
  final val probabilityCol: Param[String] =
    new Param[String](this, "probabilityCol", "class probabilities (ML Vector)")
  final val predictedLabelCol: Param[String] =
    new Param[String](this, "predictedLabelCol", "predicted class name from the spec's labels")
  final val topK: IntParam =
    new IntParam(this, "topK", "how many best classes go into topKCol", ParamValidators.gtEq(1))
  final val topKCol: Param[String] =
    new Param[String](
      this,
      "topKCol",
      "the topK best classes: array<struct<index,label,probability>>"
    )

  setDefault(
    predictionCol -> "prediction",
    probabilityCol -> "probability",
    predictedLabelCol -> "predictedLabel",
    topK -> 5,
    topKCol -> "topK"
  )

  def setPredictionCol(v: String): this.type = set(predictionCol, v)
  def setProbabilityCol(v: String): this.type = set(probabilityCol, v)
  def setPredictedLabelCol(v: String): this.type = set(predictedLabelCol, v)
  def setTopK(v: Int): this.type = set(topK, v)
  def setTopKCol(v: String): this.type = set(topKCol, v)

  def getPredictionCol: String = $(predictionCol)
  def getProbabilityCol: String = $(probabilityCol)
  def getPredictedLabelCol: String = $(predictedLabelCol)
  def getTopK: Int = $(topK)
  def getTopKCol: String = $(topKCol)

  override def transformSchema(schema: StructType): StructType = {
    val topKType = ArrayType(
      StructType(
        Seq(
          StructField("index", IntegerType, nullable = false),
          StructField("label", StringType),
          StructField("probability", DoubleType, nullable = false)
        )
      )
    )
    withOutputs(
      schema,
      Seq(
        StructField(getPredictionCol, DoubleType),
        StructField(getProbabilityCol, SQLDataTypes.VectorType),
        StructField(getPredictedLabelCol, StringType),
        StructField(getTopKCol, topKType)
      )
    )
  }

  override def transform(dataset: Dataset[_]): DataFrame = {
    val schema = transformSchema(dataset.schema, logging = true)
    val df = dataset.toDF()
    val metrics = newMetrics(df)
    val decode = (bytes: Array[Byte]) =>
      ArrowCodec.decodeScores(bytes).map { s =>
        val out: Either[String, Seq[Any]] =
          if (s.error != null) Left(s.error)
          else Right(Seq(s.prediction.toDouble, Vectors.dense(s.probability), s.label, s.topK))
        out
      }
    NativeRunner.transform(
      df,
      this,
      schema,
      metrics,
      TaskPipeline.Score,
      Seq(getInputCol),
      NativeRunner.imageInput(df, getInputCol),
      decode,
      Seq(null, null, null, null),
      s""", "top_k": $getTopK"""
    )
  }

  override def copy(extra: ParamMap): ImageScorer = defaultCopy(extra)
}

object ImageScorer extends DefaultParamsReadable[ImageScorer]
