package dev.torchspark

import java.util.concurrent.atomic.AtomicBoolean

import org.apache.spark.ml.Transformer
import org.apache.spark.ml.param._
import org.apache.spark.ml.util.{
  DefaultParamsReadable,
  DefaultParamsWritable,
  Identifiable,
  MLReader,
  MLWriter
}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.functions.col
import org.apache.spark.sql.types._

/** Scores images with a classifier (a version-1 image spec), natively, once-per-executor model.
  *
  * The `score` preset over [[TorchModel]]: its columns are the spec's score outputs as
  * `describePreset` gives them (docs/models-jvm.md). Adds `predictionCol` (double class index),
  * `probabilityCol` (ML Vector), `predictedLabelCol` (from the spec's labels, default
  * `predicted_label`), `topKCol` (array<struct<index int, label string, probability double>>,
  * default `top_k`) and, with `handleInvalid=keep`, `errorCol`. Works with
  * MulticlassClassificationEvaluator as is.
  *
  * The old default columns `predictedLabel` and `topK` are still added, as copies, for one release
  * while `predictedLabelCol` / `topKCol` are left at their defaults (CHANGELOG.md).
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
    predictedLabelCol -> ImageScorer.PredictedLabel,
    topK -> 5,
    topKCol -> ImageScorer.TopK
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

  /** The score preset into this transformer's columns. */
  private def runner(schema: StructType): (TorchModel, ModelSchema) = {
    val model = imageModel(schema, TaskPipeline.Score)
    val call = ModelCall(
      TaskPipeline.Score,
      "ImageScorer",
      outputs = Map(
        "prediction" -> getPredictionCol,
        "probability" -> getProbabilityCol,
        ImageScorer.PredictedLabel -> getPredictedLabelCol,
        ImageScorer.TopK -> getTopKCol
      ),
      types = ImageScorer.types(model),
      options = s""", "top_k": $getTopK"""
    )
    (imageRunner(model, call), model)
  }

  /** The old default column names and the columns they copy: for each of `predictedLabelCol` and
    * `topKCol` left at its default (not set, and not loaded with another default from a pipeline
    * saved before the rename), unless `schema` already has a column of that name.
    */
  private def aliases(schema: StructType): Seq[(String, String)] =
    Seq(
      (predictedLabelCol, ImageScorer.PredictedLabel, "predictedLabel"),
      (topKCol, ImageScorer.TopK, "topK")
    ).collect {
      case (p, now, old) if !isSet(p) && $(p) == now && !schema.fieldNames.contains(old) =>
        old -> now
    }

  override def transformSchema(schema: StructType): StructType = MlflowResolver.once {
    val out = runner(schema)._1.transformSchema(schema)
    StructType(out.fields ++ aliases(out).map { case (old, now) => out(now).copy(name = old) })
  }

  override def transform(dataset: Dataset[_]): DataFrame = MlflowResolver.once {
    val (inner, model) = runner(dataset.schema)
    val out = inner.run(dataset, model)
    keepMetrics(inner.metrics)
    val copies = aliases(out.schema)
    if (copies.nonEmpty && ImageScorer.warned.compareAndSet(false, true))
      ImageScorer.log.warn(
        s"ImageScorer: the columns ${copies.map(_._1).mkString(", ")} are deprecated copies of " +
          s"${copies.map(_._2).mkString(", ")} (the new default names) and go in the next " +
          "release; read the new columns, or set predictedLabelCol / topKCol (CHANGELOG.md)"
      )
    copies.foldLeft(out) { case (df, (old, now)) => df.withColumn(old, col(now)) }
  }

  override def copy(extra: ParamMap): ImageScorer = defaultCopy(extra)

  /** Params as Spark saves them, and with embedModel the model's copy (docs/saved-pipelines.md). */
  override def write: MLWriter = new SavedModel.Writer(this, super.write)
}

object ImageScorer extends DefaultParamsReadable[ImageScorer] {

  /** Loads a saved stage, pointed at the model copy saved with it when there is one. */
  override def read: MLReader[ImageScorer] = new SavedModel.Reader(super.read)

  /** The score preset's label and top-k outputs: the columns' default names too. */
  private val PredictedLabel = "predicted_label"
  private val TopK = "top_k"

  private val warned = new AtomicBoolean(false)
  private val log = org.slf4j.LoggerFactory.getLogger("dev.torchspark")

  /** Where the Spark columns differ from the native score result (plan of issue 26): `top_k`'s
    * probability is a double, as `probabilityCol`'s Vector holds doubles.
    */
  private def types(model: ModelSchema): Map[String, DataType] =
    model.outputs.collect {
      case f if f.name == TopK => f.name -> ModelSchema.withDoubles(f.dataType)
    }.toMap
}
