package dev.torchspark

import org.apache.spark.ml.Transformer
import org.apache.spark.ml.linalg.SQLDataTypes
import org.apache.spark.ml.param._
import org.apache.spark.ml.util.{
  DefaultParamsReadable,
  DefaultParamsWritable,
  Identifiable,
  MLReader,
  MLWriter
}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.types._

/** Embeds images with the spec's featurize output (a method such as `features`, or one element of
  * forward's tuple) into `outputCol`, an ML Vector that Spark ML estimators train on directly.
  *
  * The `featurize` preset over [[TorchModel]] (a version-1 image spec with a `featurize` entry):
  * its one output, `features`, as an ML Vector.
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

  /** The featurize preset's one output into `outputCol`, as an ML Vector. */
  private def runner(schema: StructType): (TorchModel, ModelSchema) = {
    val model = imageModel(schema, TaskPipeline.Featurize)
    val call = ModelCall(
      TaskPipeline.Featurize,
      "ImageFeaturizer",
      outputs = model.outputs.map(_.name -> getOutputCol).toMap,
      types = model.outputs.map(_.name -> SQLDataTypes.VectorType).toMap
    )
    (imageRunner(model, call), model)
  }

  override def transformSchema(schema: StructType): StructType =
    MlflowResolver.once(runner(schema)._1.transformSchema(schema))

  override def transform(dataset: Dataset[_]): DataFrame = MlflowResolver.once {
    val (inner, model) = runner(dataset.schema)
    val out = inner.run(dataset, model)
    keepMetrics(inner.metrics)
    out
  }

  override def copy(extra: ParamMap): ImageFeaturizer = defaultCopy(extra)

  /** Params as Spark saves them, and with embedModel the model's copy (docs/saved-pipelines.md). */
  override def write: MLWriter = new SavedModel.Writer(this, super.write)
}

object ImageFeaturizer extends DefaultParamsReadable[ImageFeaturizer] {

  /** Loads a saved stage, pointed at the model copy saved with it when there is one. */
  override def read: MLReader[ImageFeaturizer] = new SavedModel.Reader(super.read)
}
