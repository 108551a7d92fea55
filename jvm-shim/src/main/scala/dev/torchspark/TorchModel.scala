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
import org.apache.spark.sql.{DataFrame, Dataset, Row, SparkSession}
import org.apache.spark.sql.types._

/** Runs any TorchScript or AOTInductor model whose inputs and outputs are tensors, natively, with
  * the model opened once per executor: the spec beside the model (`"spec_version": 2`, see
  * docs/models-jvm.md) declares `forward`'s inputs (which columns, dtype, per-row shape) and its
  * outputs (which part of what it returns, post-processing, and the column kind).
  *
  * Appends one column per declared output, in the spec's order (named as the outputs, or as
  * `outputCols` renames them): a scalar (double, float, long, int), an ML Vector, a nested array,
  * an `array<struct<...>>` or a binary PNG; and, with `handleInvalid=keep`, `errorCol`. Inputs read
  * the spec's columns unless `inputCols` maps them elsewhere; a `text` input reads a string (or
  * UTF-8 binary) column, tokenized natively ([[TextEmbedder]] is its preset for embeddings); an
  * `image` input reads binary (encoded images), Spark's image struct or the preprocessed C×H×W
  * values (array<float>). A version-1 (image) spec also runs: input `image`, output `output` (a
  * Vector); [[ImageScorer]] and [[ImageFeaturizer]] are its presets `score` and `featurize`.
  *
  * @param call
  *   the outputs a call selects (the `predict` preset: every output) and how a preset over this
  *   transformer shows them; see [[ModelCall]]
  */
class TorchModel private[torchspark] (
    override val uid: String,
    private[torchspark] val call: ModelCall
) extends Transformer
    with TorchSparkModelParams
    with DefaultParamsWritable {

  def this(uid: String) = this(uid, ModelCall.predict)

  def this() = this(Identifiable.randomUID("TorchModel"))

  final val inputCols: StringArrayParam = new StringArrayParam(
    this,
    "inputCols",
    "input=column or input=col1,col2,...: the DataFrame column(s) an input of the spec reads " +
      "(default: the spec's `column`); several numeric columns are gathered into one 1-D input, " +
      "and one column for an input the spec gathers holds the whole vector",
    (a: Array[String]) => a != null && a.forall(TorchModel.pair(_).isDefined)
  )

  final val outputCols: StringArrayParam = new StringArrayParam(
    this,
    "outputCols",
    "output=column: the column an output of the spec is written to (default: the output's name)",
    (a: Array[String]) => a != null && a.forall(TorchModel.pair(_).exists(_._2.size == 1))
  )

  setDefault(inputCols -> Array.empty[String], outputCols -> Array.empty[String])

  def setInputCols(v: Array[String]): this.type = set(inputCols, v)
  def setOutputCols(v: Array[String]): this.type = set(outputCols, v)

  final def getInputCols: Array[String] = $(inputCols)
  final def getOutputCols: Array[String] = $(outputCols)

  private def who = s"${call.who}($getModelPath)"

  /** The spec's inputs and the outputs of [[call]]'s preset (read beside the model on this JVM,
    * described natively).
    */
  private[torchspark] def modelSchema(): ModelSchema = {
    require(isDefined(modelPath), s"${call.who}: set modelPath")
    ModelSource(SparkSession.active, getModelPath).describe(call.preset)
  }

  /** Each data input with the columns it reads from `schema`, and each output's Spark field. */
  private def plan(
      schema: StructType,
      model: ModelSchema
  ): (Seq[(InputDecl, Seq[String])], Seq[StructField]) = {
    val data = model.dataInputs
    val inputMap = call.columns ++
      pairs(getInputCols, "inputCols", data.map(_.name), "input")
    val outputMap = call.outputs ++
      pairs(getOutputCols, "outputCols", model.outputs.map(_.name), "output").map { case (k, v) =>
        k -> v.head
      }
    val inputs = data.map(d => d -> inputMap.getOrElse(d.name, d.columns))
    inputs.foreach { case (d, cols) => checkInput(d, cols, schema) }
    val outputs = model.outputs.map { f =>
      StructField(
        outputMap.getOrElse(f.name, f.name),
        call.types.getOrElse(f.name, f.dataType),
        f.nullable
      )
    }
    (inputs, outputs)
  }

  /** `name=value` entries of `param` as a map, each name one of `known`. */
  private def pairs(
      entries: Array[String],
      param: String,
      known: Seq[String],
      what: String
  ): Map[String, Seq[String]] = {
    val parsed = entries.toSeq.map { e =>
      TorchModel.pair(e).getOrElse {
        throw new IllegalArgumentException(s"$who: $param entry `$e` is not $what=column")
      }
    }
    parsed.foreach { case (name, _) =>
      require(
        known.contains(name),
        s"$who: $param names $what `$name`, which the spec does not declare (its ${what}s: " +
          s"${known.mkString(", ")})"
      )
    }
    val twice = parsed.map(_._1).diff(parsed.map(_._1).distinct)
    require(twice.isEmpty, s"$who: $param names $what `${twice.headOption.orNull}` twice")
    parsed.toMap
  }

  private def checkInput(d: InputDecl, cols: Seq[String], schema: StructType): Unit = {
    val where = s"$who: input `${d.name}` (${d.kind} ${d.dtype} ${d.shapeText})"
    cols.foreach { c =>
      require(
        schema.fieldNames.contains(c),
        s"$where reads column `$c`, which the DataFrame does not have (its columns: " +
          s"${schema.fieldNames.mkString(", ")}); map the input to a column with inputCols " +
          s"""("${d.name}=<column>")"""
      )
      val dt = schema(c).dataType
      if (d.isText)
        require(
          TensorCodec.isText(dt),
          s"$where reads column `$c` of type ${dt.simpleString}: a text input reads a string or " +
            "binary (UTF-8) column"
        )
      else {
        TensorCodec.unsupported(dt).foreach { why =>
          throw new IllegalArgumentException(s"$where: column `$c` $why")
        }
        require(
          dt != StringType,
          s"$where reads column `$c` of type string: only a text input (kind text, with a " +
            "tokenizer) reads strings"
        )
      }
    }
    if (d.isText)
      require(
        cols.size == 1,
        s"$where reads ${cols.mkString(", ")}: a text input reads one string column"
      )
    else if (d.isImage) {
      val dt = schema(cols.head).dataType
      require(
        cols.size == 1 && TensorCodec.isImageColumn(dt),
        s"$where reads ${cols.mkString(", ")}: an image input reads one column, " +
          s"${TensorCodec.imageColumns}; not ${dt.simpleString}"
      )
    } else if (cols.size > 1)
      cols.filterNot(c => TensorCodec.isScalar(schema(c).dataType)).foreach { c =>
        throw new IllegalArgumentException(
          s"$where gathers ${cols.mkString(", ")}: each must be a numeric column, but `$c` is " +
            schema(c).dataType.simpleString
        )
      }
  }

  override def transformSchema(schema: StructType): StructType = MlflowResolver.once {
    schemaOf(schema, modelSchema())
  }

  /** transformSchema with the spec `model` already described (a preset that selects outputs by name
    * passes the ones it selects).
    */
  private[torchspark] def schemaOf(schema: StructType, model: ModelSchema): StructType =
    appendOutputs(schema, plan(schema, model)._2)

  // One read of the spec (it may be in cluster storage) and one describe per transform.
  // An MLflow URI resolves once for both (MlflowResolver.once): the job reads that version.
  override def transform(dataset: Dataset[_]): DataFrame =
    MlflowResolver.once(run(dataset, modelSchema()))

  /** transform with the spec `model` already described (a preset reads it to check it). */
  private[torchspark] def run(dataset: Dataset[_], model: ModelSchema): DataFrame =
    MlflowResolver.once(runResolved(dataset, model))

  private def runResolved(dataset: Dataset[_], model: ModelSchema): DataFrame = {
    val (inputs, outputs) = plan(dataset.schema, model)
    val schema = appendOutputs(dataset.schema, outputs)
    val df = dataset.toDF()
    val metrics = newMetrics(df)
    val columns =
      inputs.flatMap(_._2).distinct.map(c => (c, df.schema.fieldIndex(c), df.schema(c).dataType))
    val encode = (rows: Seq[Row]) =>
      TensorCodec.encode(
        columns.map { case (name, i, dt) =>
          TensorCodec.Column(name, dt, rows.map(r => r.get(i): Any).toArray)
        },
        rows.size
      )
    val count = outputs.size
    val types = outputs.map(_.dataType)
    val decode = (bytes: Array[Byte]) => TensorCodec.decode(bytes, types)
    val mapping = inputs
      .map { case (d, cols) =>
        s"${NativeRunner.json(d.name)}: ${cols.map(NativeRunner.json).mkString("[", ", ", "]")}"
      }
      .mkString("{", ", ", "}")
    NativeRunner.transform(
      df,
      this,
      schema,
      metrics,
      call.preset,
      call.who,
      columns.map(_._1),
      encode,
      decode,
      Seq.fill(count)(null),
      s""", "columns": $mapping${call.options}""",
      // Text rows are sorted by length natively within a call: give it several batches to sort.
      if (inputs.exists(_._1.isText)) TorchModel.textBatchesPerCall else 1
    )
  }

  override def copy(extra: ParamMap): TorchModel = copyValues(new TorchModel(uid, call), extra)

  /** Params as Spark saves them, and with embedModel the model's copy (docs/saved-pipelines.md). */
  override def write: MLWriter = new SavedModel.Writer(this, super.write)
}

/** What a preset over [[TorchModel]] runs ([[ImageScorer]], [[ImageFeaturizer]], [[TextEmbedder]]):
  *
  * @param preset
  *   the outputs the native call selects (`score`, `featurize`, `predict`, `embed`); the schema is
  *   `describePreset`'s for it
  * @param who
  *   the transformer errors and warnings name
  * @param columns
  *   input name -> the column(s) it reads (before `inputCols`, which a preset leaves unset)
  * @param outputs
  *   output name -> its column (before `outputCols`)
  * @param types
  *   output name -> the Spark type of its column where the preset's differs from the described one
  *   (TensorCodec reads the native column as it: e.g. float32 features as an ML Vector)
  * @param options
  *   batch options after the columns' (`, "top_k": 5`)
  */
private[torchspark] final case class ModelCall(
    preset: String,
    who: String,
    columns: Map[String, Seq[String]] = Map.empty,
    outputs: Map[String, String] = Map.empty,
    types: Map[String, DataType] = Map.empty,
    options: String = ""
)

private[torchspark] object ModelCall {

  /** TorchModel's own call: every output of the spec. */
  val predict: ModelCall = ModelCall(TaskPipeline.Predict, "TorchModel")
}

object TorchModel extends DefaultParamsReadable[TorchModel] {

  /** Loads a saved stage, pointed at the model copy saved with it when there is one. */
  override def read: MLReader[TorchModel] = new SavedModel.Reader(super.read)

  /** Forward passes of `batchSize` rows per native call for a spec with a text input. */
  private[torchspark] val textBatchesPerCall = 32

  /** `name=a` or `name=a,b,c` as (name, columns); None when malformed. */
  private[torchspark] def pair(entry: String): Option[(String, Seq[String])] =
    Option(entry).map(_.split("=", 2)).collect {
      case Array(name, cols) if name.trim.nonEmpty && cols.split(",").forall(_.trim.nonEmpty) =>
        (name.trim, cols.split(",").toSeq.map(_.trim))
    }
}
