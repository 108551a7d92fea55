package dev.torchspark

import scala.util.{Failure, Try}

import org.apache.spark.sql.{DataFrame, SparkSession}
import org.apache.spark.sql.types._

import dev.torchspark.sql.{TorchFunction, TorchSql}

/** Entry points for SQL users and for checking the native side from a driver. */
object TorchSpark {
  SparkLineCheck.check()

  /** Result type of an image classifier's SQL function (`name(image)`): the `score` preset's
    * outputs as `describePreset` gives them (prediction double, probability array<float>,
    * predicted_label string, top_k array<struct<index int, label string, probability double>>),
    * then `label` (predicted_label's old name, for one release) and error.
    */
  lazy val scoreType: StructType = TorchFunction.ImageScore.resultType.asInstanceOf[StructType]

  /** Registers a model for SQL. Calls run a batch of rows at a time (`TorchEval` in EXPLAIN, see
    * docs/engine.md), through the executor's shared engine.
    *
    * An image classifier (a version-1 spec) registers `name` (image → [[scoreType]]:
    * struct<prediction, probability, predicted_label, top_k, label, error>, the `score` preset) and
    * `name_features` (image → array<double>, null for a bad row; the `featurize` preset): {{{SELECT
    * classify_image(content).predicted_label FROM images}}} An image argument is binary (encoded
    * images), Spark's image struct or array<float> (preprocessed C×H×W values).
    *
    * A general model (`"spec_version": 2`, whose spec this driver can read) registers `name(c1,
    * ..., cN)`, one argument per input of the spec in order (a generated mask is not one),
    * returning struct<one field per output, error>: {{{SELECT diabetes(features).prediction FROM
    * patients}}} An input that gathers several columns takes them as one array argument
    * (`array(age, bmi, bp, s1)`). A text input takes a string (or UTF-8 binary) argument: {{{SELECT
    * embed_text(text).embedding FROM docs}}}
    */
  def register(
      spark: SparkSession,
      name: String,
      modelPath: String,
      device: String = "cpu",
      numThreads: Int = 1
  ): Unit = register(spark, name, modelPath, device, numThreads, "shared")

  /** [[register]] with the engine: "shared" (the executor's one engine, batching across tasks) or
    * "per-task" (each task calls the model itself).
    */
  def register(
      spark: SparkSession,
      name: String,
      modelPath: String,
      device: String,
      numThreads: Int,
      engine: String
  ): Unit = MlflowResolver.once {
    functions(spark, name, modelPath, device, numThreads, engine)
      .foreach(TorchSql.registerFunction(spark, _))
  }

  /** What [[register]] registers, without registering it: `name` and, for an image classifier,
    * `name_features`. The model (an MLflow URI: its version, once) is resolved and checked on the
    * driver here.
    */
  private[torchspark] def functions(
      spark: SparkSession,
      name: String,
      modelPath: String,
      device: String,
      numThreads: Int,
      engine: String
  ): Seq[TorchFunction] = MlflowResolver.once {
    require(
      engine == "shared" || engine == "per-task",
      s"$name: engine must be shared or per-task, got $engine"
    )
    val path = ModelSource(spark, modelPath)
    // What the driver can know (the model, its spec, the device) fails here, before any query.
    DriverCheck(spark, path, device, "fp32")
    def fn(n: String, kind: TorchFunction.Kind) =
      new TorchFunction(n, path, device, numThreads, kind, sqlBatchSize, engine, sqlTimeoutMs)
    def describe(spec: String, preset: String) = ModelSchema.of(spec, preset, path.specPath())
    // The spec as the native side describes it: an image classifier is the one that gives the
    // `score` preset; a spec only the executors can read is taken for one (as before).
    val spec = Try(path.specText()).toOption
    spec.map(s => Try(describe(s, TaskPipeline.Score))) match {
      case Some(Failure(_)) =>
        // Not a classifier: a general model, or an invalid spec (its error comes from here).
        val model = describe(spec.get, TaskPipeline.Predict)
        require(model.dataInputs.nonEmpty, s"$name: the spec declares no input a SQL call reads")
        Seq(fn(name, TorchFunction.General(model.dataInputs, model.outputs)))
      case score =>
        // A spec without `featurize` registers it too: its calls fail naming what is missing.
        val features = spec.flatMap(s => Try(describe(s, TaskPipeline.Featurize)).toOption)
        Seq(
          fn(
            name,
            score.map(s => TorchFunction.imageScore(s.get)).getOrElse(TorchFunction.ImageScore)
          ),
          fn(
            s"${name}_features",
            features.map(TorchFunction.imageFeatures).getOrElse(TorchFunction.ImageFeatures)
          )
        )
    }
  }

  /** Rows per native call of a SQL function: 0 = auto, the transformers' default batch. */
  val sqlBatchSize = 0

  /** The bound on each wait for the engine, as the transformers' `engineTimeoutMs` default. */
  val sqlTimeoutMs = 600000L

  /** The most inputs a general model's SQL function took when functions were Java UDFs. Unused: SQL
    * functions take any number of arguments.
    */
  @deprecated(
    "unused: SQL functions take any number of arguments; removed in the next release",
    "0.1.0"
  )
  val maxSqlInputs = 10

  /** Image files under `path` (binaryFile rows: path, modificationTime, length, content), searched
    * recursively and filtered by the file-name glob `pattern`, in a few partitions per task slot:
    * Spark's default of one partition per 4 MB of small files (`openCostInBytes`) would give
    * thousands of tiny tasks, and a model call per few images.
    */
  def readImages(
      spark: SparkSession,
      path: String,
      pattern: String = "*",
      partitionsPerSlot: Int = 3
  ): DataFrame = {
    require(partitionsPerSlot >= 1, "partitionsPerSlot must be >= 1")
    val df = spark.read
      .format("binaryFile")
      .option("recursiveFileLookup", "true")
      .option("pathGlobFilter", pattern)
      .load(path)
    // Coalescing merges file splits without a shuffle; asking for more partitions is a no-op.
    df.coalesce(imagePartitions(df.inputFiles.length, taskSlots(spark), partitionsPerSlot))
  }

  /** readImages(spark, path) for Java and py4j callers. */
  def readImages(spark: SparkSession, path: String): DataFrame = readImages(spark, path, "*", 3)

  /** Partitions for `files` images: `perSlot` per task slot, never more than one per file. */
  def imagePartitions(files: Int, slots: Int, perSlot: Int): Int =
    math.max(1, math.min(files, slots * perSlot))

  /** Task slots of the application: its cores (registered, or asked for with
    * spark.executor.instances × spark.executor.cores) over spark.task.cpus.
    */
  def taskSlots(spark: SparkSession): Int = {
    val conf = spark.sparkContext.getConf
    val asked = conf.getInt("spark.executor.instances", 0) * conf.getInt("spark.executor.cores", 1)
    math.max(
      1,
      math.max(spark.sparkContext.defaultParallelism, asked) / conf.getInt("spark.task.cpus", 1)
    )
  }

  /** Checks every executor (host, executor, libtorch, ISA, bf16, loads and scores a tiny model),
    * prints the table and returns its rows; what to run when executors fail to load.
    */
  def doctor(spark: SparkSession): Seq[DoctorRow] = {
    val rows = Doctor.rows(spark, math.max(2, taskSlots(spark) * 4))
    println(Doctor.table(rows))
    rows
  }

  /** The doctor's rows as JSON lines, for the Python twin. */
  def doctorJson(spark: SparkSession, tasks: Int): Array[String] =
    Doctor.rows(spark, tasks).map(_.toJson).toArray

  /** What an MLflow model URI (`models:/name@alias`, `models:/name/3`, `models:/m-<id>`,
    * `runs:/<run>/<path>`) resolves to now on the tracking server of
    * `spark.torchspark.mlflow.trackingUri` (or MLFLOW_TRACKING_URI): its version and model file
    * (docs/mlflow.md). Every surface that takes a model path resolves such a URI the same way, once
    * per transform or registration.
    */
  def resolveMlflow(spark: SparkSession, uri: String): MlflowModel = {
    require(MlflowResolver.isMlflowUri(uri), s"$uri is not an MLflow model URI (models:/, runs:/)")
    MlflowResolver.resolve(spark, uri)
  }

  /** Models loaded from disk by this JVM (on the driver in local mode: every executor). */
  def nativeModelLoads(): Long = NativeBridge.loadCount()
}
