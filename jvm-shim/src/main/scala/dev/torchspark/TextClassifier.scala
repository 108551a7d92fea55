package dev.torchspark

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
import org.apache.spark.sql.types._

/** Classifies text natively: a string (or UTF-8 binary) column in, the class, its probabilities,
  * its name and the best k classes out, with the model and its tokenizer opened once per executor
  * (see docs/text.md, TextClassifier).
  *
  * A preset over [[TorchModel]]: the spec beside the model (written by
  * `torchspark.export_text_model(..., task="text-classification")`) declares one input of kind
  * `text` and the outputs `prediction`, `probability`, `predicted_label` and `top_k` (class writers
  * over the logits after softmax or sigmoid, by the model's `problem_type`); this selects them by
  * name into `predictionCol` (double class index), `probabilityCol` (ML Vector),
  * `predictedLabelCol` (string) and, when `topK` > 0, `topKCol` (array<struct<index int, label
  * string, probability double>>). The spec's other outputs (its `logits`) are TorchModel's. Works
  * with MulticlassClassificationEvaluator as is.
  */
class TextClassifier(override val uid: String)
    extends Transformer
    with TorchSparkModelParams
    with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("TextClassifier"))

  final val inputCol: Param[String] = new Param[String](
    this,
    "inputCol",
    "text column: string, or binary holding UTF-8 bytes",
    (c: String) => c != null && c.nonEmpty
  )
  final val predictionCol: Param[String] =
    new Param[String](this, "predictionCol", "predicted class index (double)")
  final val probabilityCol: Param[String] =
    new Param[String](this, "probabilityCol", "class probabilities (ML Vector)")
  final val predictedLabelCol: Param[String] =
    new Param[String](this, "predictedLabelCol", "predicted class name (the model's id2label)")
  final val topK: IntParam =
    new IntParam(
      this,
      "topK",
      "how many best classes go into topKCol (0: no topKCol column)",
      ParamValidators.gtEq(0)
    )
  final val topKCol: Param[String] =
    new Param[String](
      this,
      "topKCol",
      "the topK best classes: array<struct<index,label,probability>>"
    )

  setDefault(
    inputCol -> "text",
    predictionCol -> "prediction",
    probabilityCol -> "probability",
    predictedLabelCol -> TextClassifier.PredictedLabel,
    topK -> 5,
    topKCol -> TextClassifier.TopK
  )

  def setInputCol(v: String): this.type = set(inputCol, v)
  def setPredictionCol(v: String): this.type = set(predictionCol, v)
  def setProbabilityCol(v: String): this.type = set(probabilityCol, v)
  def setPredictedLabelCol(v: String): this.type = set(predictedLabelCol, v)
  def setTopK(v: Int): this.type = set(topK, v)
  def setTopKCol(v: String): this.type = set(topKCol, v)

  final def getInputCol: String = $(inputCol)
  def getPredictionCol: String = $(predictionCol)
  def getProbabilityCol: String = $(probabilityCol)
  def getPredictedLabelCol: String = $(predictedLabelCol)
  def getTopK: Int = $(topK)
  def getTopKCol: String = $(topKCol)

  private def who = s"TextClassifier($getModelPath)"

  /** The output names this call selects, in column order. */
  private def selected: Seq[String] =
    Seq(TextClassifier.Prediction, TextClassifier.Probability, TextClassifier.PredictedLabel) ++
      (if (getTopK > 0) Seq(TextClassifier.TopK) else Nil)

  /** The spec's text input, and the schema restricted to the selected outputs; or an error naming
    * what the spec declares.
    */
  private def check(model: ModelSchema): (InputDecl, ModelSchema) = {
    val data = model.dataInputs
    val texts = data.filter(_.isText)
    val byName = model.outputs.map(f => f.name -> f).toMap
    val missing = TextClassifier.All.filterNot(byName.contains)
    if (data.size != 1 || texts.size != 1 || missing.nonEmpty) {
      val ins = model.inputs.map(d => s"${d.name} (${d.kind})").mkString(", ")
      val outs = model.outputs.map(f => s"${f.name} (${f.dataType.simpleString})").mkString(", ")
      throw new IllegalArgumentException(
        s"$who: the spec declares inputs [$ins] and outputs [$outs]; TextClassifier needs " +
          "exactly one input of kind text (masks and type_ids aside) and the outputs " +
          s"${TextClassifier.All.mkString(", ")} (torchspark.export_text_model(..., " +
          "task=\"text-classification\") writes them): run other models with TorchModel"
      )
    }
    (texts.head, model.copy(outputs = selected.map(byName)))
  }

  /** Every output of the spec (the `predict` preset), for [[check]]. */
  private def modelSchema(): ModelSchema = {
    require(isDefined(modelPath), "TextClassifier: set modelPath")
    ModelSource(org.apache.spark.sql.SparkSession.active, getModelPath)
      .describe(TaskPipeline.Predict)
  }

  /** The TorchModel this preset runs and the outputs it selects: the same params, the text input
    * read from `inputCol`, the class outputs by name (the `outputs` call option) into this
    * transformer's columns.
    */
  private def runner(schema: StructType, described: ModelSchema): (TorchModel, ModelSchema) = {
    val (text, model) = check(described)
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
    val columns = Map(
      TextClassifier.Prediction -> getPredictionCol,
      TextClassifier.Probability -> getProbabilityCol,
      TextClassifier.PredictedLabel -> getPredictedLabelCol,
      TextClassifier.TopK -> getTopKCol
    ).filter { case (k, _) => selected.contains(k) }
    columns.values.foreach { c =>
      require(!schema.fieldNames.contains(c), s"$who: column `$c` already exists; set its param")
    }
    val names = selected.map(NativeRunner.json).mkString("[", ", ", "]")
    val call = ModelCall(
      TaskPipeline.Predict,
      "TextClassifier",
      columns = Map(text.name -> Seq(getInputCol)),
      outputs = columns,
      // top_k's probability a double, as probabilityCol's Vector holds doubles (as ImageScorer).
      types = model.outputs.collect {
        case f if f.name == TextClassifier.TopK => f.name -> ModelSchema.withDoubles(f.dataType)
      }.toMap,
      options = s""", "top_k": ${math.max(getTopK, 1)}, "outputs": $names"""
    )
    // Same uid: the metrics' accumulators are named after this transformer.
    (copyValues(new TorchModel(uid, call)), model)
  }

  override def transformSchema(schema: StructType): StructType = MlflowResolver.once {
    val (inner, model) = runner(schema, modelSchema())
    inner.schemaOf(schema, model)
  }

  override def transform(dataset: Dataset[_]): DataFrame = MlflowResolver.once {
    val (inner, model) = runner(dataset.schema, modelSchema())
    val out = inner.run(dataset, model)
    keepMetrics(inner.metrics)
    out
  }

  override def copy(extra: ParamMap): TextClassifier = defaultCopy(extra)

  /** Params as Spark saves them, and with embedModel the model's copy (docs/saved-pipelines.md). */
  override def write: MLWriter = new SavedModel.Writer(this, super.write)
}

object TextClassifier extends DefaultParamsReadable[TextClassifier] {

  /** Loads a saved stage, pointed at the model copy saved with it when there is one. */
  override def read: MLReader[TextClassifier] = new SavedModel.Reader(super.read)

  /** The spec's class outputs (export_text_model's names): the default column names too. */
  private val Prediction = "prediction"
  private val Probability = "probability"
  private val PredictedLabel = "predicted_label"
  private val TopK = "top_k"
  private val All = Seq(Prediction, Probability, PredictedLabel, TopK)
}
