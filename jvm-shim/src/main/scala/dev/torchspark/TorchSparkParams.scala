package dev.torchspark

import org.apache.spark.ml.param._
import org.apache.spark.sql.DataFrame
import org.apache.spark.sql.types.{StringType, StructField, StructType}

/** Params shared by every torchspark transformer ([[ImageScorer]], [[ImageFeaturizer]],
  * [[TorchModel]]; the Python classes mirror them): the model, where and how it runs, and what a
  * row that cannot be scored does.
  */
trait TorchSparkModelParams extends Params {

  // First, before any Scala library call that differs between 2.12 and 2.13.
  SparkLineCheck.check()

  final val modelPath: Param[String] = new Param[String](
    this,
    "modelPath",
    "path of the model file, a TorchScript .pt or an AOTInductor .pt2 (its spec .json beside " +
      "it): a Hadoop FileSystem URI (hdfs://, abfs://, s3a://, ...; copied once per node), a " +
      "local path on every node, or the name of " +
      "a file shipped with --files / SparkContext.addFile",
    (p: String) => p != null && p.nonEmpty
  )

  final val batchSize: IntParam =
    new IntParam(
      this,
      "batchSize",
      "rows per forward pass; 0 (the default) means auto: about 4 MiB of input per pass, a " +
        "power of two, from the model's spec (32x32 images: 256; 224x224: 16; text: 64; see " +
        "docs/engine.md)",
      ParamValidators.gtEq(0)
    )

  final val engine: Param[String] = new Param[String](
    this,
    "engine",
    "shared: one inference engine per executor batches all its tasks' rows and runs the forward " +
      "beside the reading and decoding; per-task: each task calls the model itself (the reference)",
    ParamValidators.inArray(Array("shared", "per-task"))
  )

  final val engineTimeoutMs: LongParam = new LongParam(
    this,
    "engineTimeoutMs",
    "longest wait for the shared engine (queue space, a result), in milliseconds",
    ParamValidators.gt(0)
  )

  final val device: Param[String] = new Param[String](
    this,
    "device",
    "cpu or cuda:N",
    (d: String) => d == "cpu" || d == "cuda" || d.matches("cuda:\\d+")
  )

  final val numThreads: IntParam = new IntParam(
    this,
    "numThreads",
    "intra-op threads per task; 0 means spark.task.cpus",
    ParamValidators.gtEq(0)
  )

  final val precision: Param[String] = new Param[String](
    this,
    "precision",
    "fp32, or bf16 (opt-in; the model must be exported unfrozen)",
    ParamValidators.inArray(Array("fp32", "bf16"))
  )

  final val handleInvalid: Param[String] = new Param[String](
    this,
    "handleInvalid",
    "rows that cannot be scored: error (fail the task, naming the row), skip (drop and count " +
      "them), keep (null outputs and a reason in errorCol)",
    ParamValidators.inArray(Array("error", "skip", "keep"))
  )

  final val errorCol: Param[String] = new Param[String](
    this,
    "errorCol",
    "with handleInvalid=keep: the reason a row failed, null for good rows",
    (c: String) => c != null && c.nonEmpty
  )

  final val maxPixels: LongParam = new LongParam(
    this,
    "maxPixels",
    "largest image (width x height) decoded, checked from the file's header; 0 means the " +
      "spec's preprocess.max_pixels (default 178,956,970), which a smaller value lowers",
    ParamValidators.gtEq(0)
  )

  final val maxRowElements: LongParam = new LongParam(
    this,
    "maxRowElements",
    "most values one row of one input may hold (a list's length, a sparse vector's size, an " +
      "image at its own size's C x H x W), checked before it is copied; more is a row error. " +
      "0 means the spec's inputs[i].max_row_elements (default 67,108,864), which a smaller " +
      "value lowers (docs/limits.md)",
    ParamValidators.gtEq(0)
  )

  final val maxBatchBytes: LongParam = new LongParam(
    this,
    "maxBatchBytes",
    "most bytes of one forward pass's inputs (padding and masks included): passes are cut " +
      "before it, and a row that alone passes it is a row error. 0 means the engine's queue " +
      "bound (256 MiB), which a smaller value lowers (docs/limits.md)",
    ParamValidators.gtEq(0)
  )

  final val maxTextBytes: LongParam = new LongParam(
    this,
    "maxTextBytes",
    "most UTF-8 bytes of one text row; a longer one is a row error, never tokenized. 0 means " +
      "the spec's inputs[i].max_text_bytes (default 1,048,576), which a smaller value lowers " +
      "(docs/limits.md)",
    ParamValidators.gtEq(0)
  )

  final val embedModel: BooleanParam = new BooleanParam(
    this,
    "embedModel",
    "save() copies the model file, its spec and tokenizers into the saved stage (checksummed) " +
      "and load() reads that copy, so a saved pipeline runs where the original file is gone; " +
      "false saves modelPath only, by reference (docs/saved-pipelines.md)"
  )

  setDefault(
    embedModel -> true,
    maxPixels -> 0L,
    maxRowElements -> 0L,
    maxBatchBytes -> 0L,
    maxTextBytes -> 0L,
    batchSize -> 0,
    device -> "cpu",
    numThreads -> 0,
    precision -> "fp32",
    handleInvalid -> "error",
    errorCol -> "error",
    engine -> "shared",
    engineTimeoutMs -> 600000L
  )

  def setModelPath(v: String): this.type = set(modelPath, v)
  def setBatchSize(v: Int): this.type = set(batchSize, v)
  def setDevice(v: String): this.type = set(device, v)
  def setNumThreads(v: Int): this.type = set(numThreads, v)
  def setPrecision(v: String): this.type = set(precision, v)
  def setHandleInvalid(v: String): this.type = set(handleInvalid, v)
  def setErrorCol(v: String): this.type = set(errorCol, v)
  def setMaxPixels(v: Long): this.type = set(maxPixels, v)
  def setMaxRowElements(v: Long): this.type = set(maxRowElements, v)
  def setMaxBatchBytes(v: Long): this.type = set(maxBatchBytes, v)
  def setMaxTextBytes(v: Long): this.type = set(maxTextBytes, v)
  def setEngine(v: String): this.type = set(engine, v)
  def setEngineTimeoutMs(v: Long): this.type = set(engineTimeoutMs, v)
  def setEmbedModel(v: Boolean): this.type = set(embedModel, v)

  final def getModelPath: String = $(modelPath)
  final def getBatchSize: Int = $(batchSize)
  final def getDevice: String = $(device)
  final def getNumThreads: Int = $(numThreads)
  final def getPrecision: String = $(precision)
  final def getHandleInvalid: String = $(handleInvalid)
  final def getErrorCol: String = $(errorCol)
  final def getMaxPixels: Long = $(maxPixels)
  final def getMaxRowElements: Long = $(maxRowElements)
  final def getMaxBatchBytes: Long = $(maxBatchBytes)
  final def getMaxTextBytes: Long = $(maxTextBytes)
  final def getEngine: String = $(engine)
  final def getEngineTimeoutMs: Long = $(engineTimeoutMs)
  final def getEmbedModel: Boolean = $(embedModel)

  @transient private var lastMetrics: TorchSparkMetrics = _

  /** Counters of the last `transform` (filled as its actions run). */
  def metrics: TorchSparkMetrics = lastMetrics

  /** Fresh counters for a `transform` of `df`, kept as [[metrics]]. */
  protected def newMetrics(df: DataFrame): TorchSparkMetrics = {
    lastMetrics = TorchSparkMetrics(df.sparkSession.sparkContext, uid)
    // An MLflow modelPath: the version this transform resolved (and its job reads).
    if (isDefined(modelPath))
      lastMetrics.mlflow = MlflowResolver.resolvedInScope(df.sparkSession, $(modelPath))
    lastMetrics
  }

  /** Keeps `m` as [[metrics]] (a preset keeps the counters of the transformer it runs). */
  protected def keepMetrics(m: TorchSparkMetrics): Unit = lastMetrics = m

  /** Appends `outputs` (and `errorCol` with handleInvalid=keep) to `schema`, refusing a name the
    * input already has or one used twice.
    */
  protected def appendOutputs(schema: StructType, outputs: Seq[StructField]): StructType = {
    val who = getClass.getSimpleName
    val out = outputs ++
      (if (getHandleInvalid == "keep") Seq(StructField(getErrorCol, StringType)) else Nil)
    out.foreach { f =>
      require(!schema.fieldNames.contains(f.name), s"$who: column `${f.name}` already exists")
    }
    val twice = out.map(_.name).diff(out.map(_.name).distinct)
    require(twice.isEmpty, s"$who: column `${twice.headOption.orNull}` would be written twice")
    StructType(schema.fields ++ out)
  }
}

/** The params of the image transformers ([[ImageScorer]], [[ImageFeaturizer]]): the common ones and
  * `inputCol`. Both are presets over [[TorchModel]]: the spec's one image input reads `inputCol`.
  */
trait TorchSparkParams extends TorchSparkModelParams {

  final val inputCol: Param[String] = new Param[String](
    this,
    "inputCol",
    "image column: binary (encoded PNG/JPEG/BMP/GIF/TIFF/WebP), Spark's image struct, or " +
      "array<float>",
    (c: String) => c != null && c.nonEmpty
  )

  def setInputCol(v: String): this.type = set(inputCol, v)

  final def getInputCol: String = $(inputCol)

  /** The spec's image input and `call`'s outputs (`describePreset`), with the shared params checked
    * against `schema`: what [[imageRunner]] runs.
    */
  protected def imageModel(schema: StructType, preset: String): ModelSchema = {
    val who = getClass.getSimpleName
    require(isDefined(modelPath), s"$who: set modelPath")
    require(isDefined(inputCol), s"$who: set inputCol")
    require(
      schema.fieldNames.contains(getInputCol),
      s"$who: no input column `$getInputCol` (the DataFrame's columns: " +
        s"${schema.fieldNames.mkString(", ")})"
    )
    val dt = schema(getInputCol).dataType
    require(
      TensorCodec.isImageColumn(dt),
      s"column `$getInputCol` has type ${dt.simpleString}; torchspark reads " +
        TensorCodec.imageColumns
    )
    ModelSource(org.apache.spark.sql.SparkSession.active, getModelPath).describe(preset)
  }

  /** The TorchModel an image preset runs: these params, the spec's image input read from
    * `inputCol`, `call`'s outputs.
    */
  protected def imageRunner(model: ModelSchema, call: ModelCall): TorchModel = {
    val images = model.dataInputs.filter(_.isImage)
    require(
      images.size == 1 && model.dataInputs.size == 1,
      s"${call.who}($getModelPath): the spec declares inputs " +
        s"[${model.inputs.map(d => s"${d.name} (${d.kind})").mkString(", ")}]; ${call.who} " +
        "needs one image input: run other models with TorchModel"
    )
    // Same uid: the metrics' accumulators are named after this transformer.
    copyValues(
      new TorchModel(uid, call.copy(columns = Map(images.head.name -> Seq(getInputCol))))
    )
  }
}
