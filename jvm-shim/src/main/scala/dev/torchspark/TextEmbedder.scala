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

/** Embeds text natively: a string (or UTF-8 binary) column in, an ML Vector column out, with the
  * model and its tokenizer opened once per executor (see docs/text-jvm.md).
  *
  * A preset over [[TorchModel]]: the spec beside the model (`"spec_version": 2`, written by
  * `torchspark.export_text_model`) must declare exactly one input of kind `text` (its masks and
  * type ids are generated) and one output of column kind `vector`. `inputCol` (default `text`)
  * feeds the text input; `outputCol` (default `embedding`) receives the vector; with
  * `handleInvalid=keep`, `errorCol` the reason a row failed (a null string, invalid UTF-8). Text
  * over the spec's `max_length` tokens is truncated and counted in `metrics.truncatedRows`. Rows
  * are sorted by length natively within each call of `32 x batchSize` rows (less padding); the
  * output keeps the input's order.
  */
class TextEmbedder(override val uid: String)
    extends Transformer
    with TorchSparkModelParams
    with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("TextEmbedder"))

  final val inputCol: Param[String] = new Param[String](
    this,
    "inputCol",
    "text column: string, or binary holding UTF-8 bytes",
    (c: String) => c != null && c.nonEmpty
  )

  final val outputCol: Param[String] = new Param[String](
    this,
    "outputCol",
    "embedding column (ML Vector)",
    (c: String) => c != null && c.nonEmpty
  )

  setDefault(inputCol -> "text", outputCol -> "embedding")

  def setInputCol(v: String): this.type = set(inputCol, v)
  def setOutputCol(v: String): this.type = set(outputCol, v)

  final def getInputCol: String = $(inputCol)
  final def getOutputCol: String = $(outputCol)

  private def who = s"TextEmbedder($getModelPath)"

  /** The spec's text input and vector output, or an error naming what the spec declares. */
  private def check(model: ModelSchema): (InputDecl, StructField) = {
    val data = model.dataInputs
    val texts = data.filter(_.isText)
    val vectors = model.outputs.filter(_.dataType == SQLDataTypes.VectorType)
    if (data.size != 1 || texts.size != 1 || model.outputs.size != 1 || vectors.size != 1) {
      val ins = model.inputs.map(d => s"${d.name} (${d.kind})").mkString(", ")
      val outs = model.outputs.map(f => s"${f.name} (${f.dataType.simpleString})").mkString(", ")
      throw new IllegalArgumentException(
        s"$who: the spec declares inputs [$ins] and outputs [$outs]; TextEmbedder needs exactly " +
          "one input of kind text (masks and type_ids aside) and one output with column " +
          "\"vector\": run other models with TorchModel"
      )
    }
    (texts.head, vectors.head)
  }

  /** Every output of the spec (the `predict` preset), for [[check]]'s message. */
  private def modelSchema(): ModelSchema = {
    require(isDefined(modelPath), "TextEmbedder: set modelPath")
    ModelSource(org.apache.spark.sql.SparkSession.active, getModelPath)
      .describe(TaskPipeline.Predict)
  }

  /** The TorchModel this preset runs: the same params, the text input read from `inputCol`, the
    * `embed` preset (the spec's one vector output, which [[check]] found) into `outputCol`.
    */
  private def runner(schema: StructType, model: ModelSchema): TorchModel = {
    val (text, output) = check(model)
    require(
      schema.fieldNames.contains(getInputCol),
      s"$who: no input column `$getInputCol` (the DataFrame's columns: " +
        s"${schema.fieldNames.mkString(", ")}); set inputCol"
    )
    val dt = schema(getInputCol).dataType
    require(
      TensorCodec.isText(dt),
      s"$who: input `${text.name}` (text) reads column `$getInputCol` of type ${dt.simpleString}: " +
        "a text input reads a string or binary (UTF-8) column"
    )
    require(
      !schema.fieldNames.contains(getOutputCol),
      s"$who: column `$getOutputCol` already exists; set outputCol"
    )
    // Same uid: the metrics' accumulators are named after this transformer.
    copyValues(
      new TorchModel(
        uid,
        ModelCall(
          TaskPipeline.Embed,
          "TextEmbedder",
          columns = Map(text.name -> Seq(getInputCol)),
          outputs = Map(output.name -> getOutputCol)
        )
      )
    )
  }

  override def transformSchema(schema: StructType): StructType = MlflowResolver.once {
    val model = modelSchema()
    runner(schema, model).transformSchema(schema)
  }

  override def transform(dataset: Dataset[_]): DataFrame = MlflowResolver.once {
    val model = modelSchema()
    val inner = runner(dataset.schema, model)
    val out = inner.run(dataset, model)
    keepMetrics(inner.metrics)
    out
  }

  override def copy(extra: ParamMap): TextEmbedder = defaultCopy(extra)

  /** Params as Spark saves them, and with embedModel the model's copy (docs/saved-pipelines.md). */
  override def write: MLWriter = new SavedModel.Writer(this, super.write)
}

object TextEmbedder extends DefaultParamsReadable[TextEmbedder] {

  /** Loads a saved stage, pointed at the model copy saved with it when there is one. */
  override def read: MLReader[TextEmbedder] = new SavedModel.Reader(super.read)
}
