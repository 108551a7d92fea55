package dev.torchspark

import java.util.concurrent.ConcurrentHashMap

import scala.util.Try

import org.apache.spark.TaskContext
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.api.java._
import org.apache.spark.sql.types._

/** Entry points for SQL users and for checking the native side from a driver. */
object TorchSpark {
  SparkLineCheck.check()

  /** Result type of the scoring UDF. */
  val scoreType: StructType = StructType(
    Seq(
      StructField("prediction", IntegerType),
      StructField("label", StringType),
      StructField("probability", ArrayType(DoubleType, containsNull = false)),
      StructField("error", StringType)
    )
  )

  // UDFs run row by row, from any task thread: each task resolves the model (fetching a remote
  // one) and opens its handle once, and closes it when it completes, as the transformers' tasks
  // do; so a model file changed on disk is what the next task scores with (see docs/model-cache.md).
  private val udfHandles = new ConcurrentHashMap[(String, String, Int, Long), java.lang.Long]()

  /** Registers a model for SQL, one row per call (the transformers batch and are much faster).
    *
    * An image classifier (a version-1 spec) registers `name` (binary image → struct<prediction,
    * label, probability, error>) and `name_features` (binary image → array<double>, null for a bad
    * row): {{{SELECT classify_image(content).label FROM images}}}
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
  ): Unit = {
    val path = ModelSource(spark, modelPath)
    // What the driver can know (the model, its spec, the device) fails here, before any query.
    DriverCheck(spark, path, device, "fp32")
    Try(path.specText()).toOption.filter(ModelSchema.specVersion(_) >= 2) match {
      case Some(spec) =>
        registerGeneral(spark, name, path, ModelSchema.of(spec), device, numThreads)
      case None => registerImage(spark, name, path, device, numThreads)
    }
  }

  private def registerImage(
      spark: SparkSession,
      name: String,
      path: ModelSource,
      device: String,
      numThreads: Int
  ): Unit = {
    def input(content: Array[Byte]) = ArrowCodec.encode(InputKind.Binary, Array[Any](content))
    val options = """{"top_k": 1}"""
    val score: UDF1[Array[Byte], Row] = (content: Array[Byte]) => {
      val s = ArrowCodec.decodeScores(
        call(path, device, numThreads, input(content), NativeBridge.score, options)
      )(0)
      if (s.error != null) Row(null, null, null, s.error)
      else Row(s.prediction, s.label, s.probability.toSeq, null)
    }
    spark.udf.register(name, score, scoreType)
    val features: UDF1[Array[Byte], Seq[Double]] = (content: Array[Byte]) => {
      val (f, _) = ArrowCodec.decodeFeatures(
        call(path, device, numThreads, input(content), NativeBridge.featurize, options)
      )(0)
      if (f == null) null else f.toSeq
    }
    spark.udf.register(s"${name}_features", features, ArrayType(DoubleType, containsNull = false))
  }

  /** The most inputs a general model's SQL function takes (Spark's Java UDFs go to 22). */
  val maxSqlInputs = 10

  private def registerGeneral(
      spark: SparkSession,
      name: String,
      path: ModelSource,
      model: ModelSchema,
      device: String,
      numThreads: Int
  ): Unit = {
    val inputs = model.dataInputs
    require(
      inputs.nonEmpty && inputs.size <= maxSqlInputs,
      s"$name: a SQL function takes 1 to $maxSqlInputs inputs, the spec declares ${inputs.size}"
    )
    val resultType = StructType(model.outputs :+ StructField("error", StringType))
    val count = model.outputs.size
    // Each input reads the argument sent under its own name.
    val columns = inputs
      .map(d => s"${NativeRunner.json(d.name)}: [${NativeRunner.json(d.name)}]")
      .mkString("{", ", ", "}")
    val options = s"""{"batch_size": 1, "columns": $columns}"""
    val run = (args: Seq[Any]) => {
      val cols = inputs.zip(args).map { case (d, v) =>
        val dt =
          try TensorCodec.typeOfValue(v).getOrElse(nullType(d))
          catch {
            case e: IllegalArgumentException =>
              throw new IllegalArgumentException(s"$name: input `${d.name}`: ${e.getMessage}", e)
          }
        TensorCodec.Column(d.name, dt, Array(v))
      }
      val answer =
        call(path, device, numThreads, TensorCodec.encode(cols, 1), NativeBridge.predict, options)
      TensorCodec.decode(answer, count)(0) match {
        case Right(outputs) => Row.fromSeq(outputs :+ null)
        case Left(error)    => Row.fromSeq(Seq.fill[Any](count)(null) :+ error)
      }
    }
    val udf = spark.udf
    // One Java UDF interface per arity: SQL functions have fixed argument counts.
    inputs.size match {
      case 1 =>
        val u: UDF1[Any, Row] = (x1: Any) => run(Seq(x1))
        udf.register(name, u, resultType)
      case 2 =>
        val u: UDF2[Any, Any, Row] = (x1: Any, x2: Any) => run(Seq(x1, x2))
        udf.register(name, u, resultType)
      case 3 =>
        val u: UDF3[Any, Any, Any, Row] = (x1: Any, x2: Any, x3: Any) => run(Seq(x1, x2, x3))
        udf.register(name, u, resultType)
      case 4 =>
        val u: UDF4[Any, Any, Any, Any, Row] = (x1: Any, x2: Any, x3: Any, x4: Any) =>
          run(Seq(x1, x2, x3, x4))
        udf.register(name, u, resultType)
      case 5 =>
        val u: UDF5[Any, Any, Any, Any, Any, Row] = (x1: Any, x2: Any, x3: Any, x4: Any, x5: Any) =>
          run(Seq(x1, x2, x3, x4, x5))
        udf.register(name, u, resultType)
      case 6 =>
        val u: UDF6[Any, Any, Any, Any, Any, Any, Row] =
          (x1: Any, x2: Any, x3: Any, x4: Any, x5: Any, x6: Any) => run(Seq(x1, x2, x3, x4, x5, x6))
        udf.register(name, u, resultType)
      case 7 =>
        val u: UDF7[Any, Any, Any, Any, Any, Any, Any, Row] =
          (x1: Any, x2: Any, x3: Any, x4: Any, x5: Any, x6: Any, x7: Any) =>
            run(Seq(x1, x2, x3, x4, x5, x6, x7))
        udf.register(name, u, resultType)
      case 8 =>
        val u: UDF8[Any, Any, Any, Any, Any, Any, Any, Any, Row] =
          (x1: Any, x2: Any, x3: Any, x4: Any, x5: Any, x6: Any, x7: Any, x8: Any) =>
            run(Seq(x1, x2, x3, x4, x5, x6, x7, x8))
        udf.register(name, u, resultType)
      case 9 =>
        val u: UDF9[Any, Any, Any, Any, Any, Any, Any, Any, Any, Row] =
          (x1: Any, x2: Any, x3: Any, x4: Any, x5: Any, x6: Any, x7: Any, x8: Any, x9: Any) =>
            run(Seq(x1, x2, x3, x4, x5, x6, x7, x8, x9))
        udf.register(name, u, resultType)
      case 10 =>
        val u: UDF10[Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Row] = (
            x1: Any,
            x2: Any,
            x3: Any,
            x4: Any,
            x5: Any,
            x6: Any,
            x7: Any,
            x8: Any,
            x9: Any,
            x10: Any
        ) => run(Seq(x1, x2, x3, x4, x5, x6, x7, x8, x9, x10))
        udf.register(name, u, resultType)
      case n => throw new IllegalArgumentException(s"$name: $n inputs")
    }
  }

  /** A null argument's type: what the input's reader expects, so that it reports the null. */
  private def nullType(d: ModelInput): DataType =
    if (d.isImage) BinaryType
    else if (d.isText) StringType
    else if (d.shape.isEmpty) DoubleType
    else ArrayType(DoubleType)

  private def call(
      source: ModelSource,
      device: String,
      threads: Int,
      input: Array[Byte],
      native: (Long, Array[Byte], String) => Array[Byte],
      options: String
  ): Array[Byte] = {
    def open(): Long =
      NativeRunner.openModel(NativeRunner.configJson(source, device, threads, "fp32"))
    Option(TaskContext.get()) match {
      case Some(ctx) =>
        val key = (source.path, device, threads, ctx.taskAttemptId())
        var opened = false
        val handle = udfHandles.computeIfAbsent(
          key,
          _ => { opened = true; java.lang.Long.valueOf(open()) }
        )
        // Outside computeIfAbsent: a listener may run at once, and it updates the same map.
        if (opened) ctx.addTaskCompletionListener[Unit] { _ =>
          Option(udfHandles.remove(key)).foreach(h => NativeBridge.closeModel(h))
        }
        native(handle, input, options)
      case None => // evaluated outside a task (e.g. on the driver): a handle for this call
        val h = open()
        try native(h, input, options)
        finally NativeBridge.closeModel(h)
    }
  }

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

  /** Models loaded from disk by this JVM (on the driver in local mode: every executor). */
  def nativeModelLoads(): Long = NativeBridge.loadCount()
}
