package dev.torchspark

import java.util.concurrent.ConcurrentHashMap

import org.apache.spark.TaskContext
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.api.java.UDF1
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

  /** Registers `name` (binary image → struct<prediction, label, probability, error>) and
    * `name_features` (binary image → array<double>, null for a bad row) for SQL:
    * {{{SELECT classify_image(content).label FROM images}}} Rows are scored one at a time; the
    * transformers batch and are much faster.
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
    val score: UDF1[Array[Byte], Row] = (content: Array[Byte]) => {
      val s =
        ArrowCodec.decodeScores(call(path, device, numThreads, content, NativeBridge.score))(0)
      if (s.error != null) Row(null, null, null, s.error)
      else Row(s.prediction, s.label, s.probability.toSeq, null)
    }
    spark.udf.register(name, score, scoreType)
    val features: UDF1[Array[Byte], Seq[Double]] = (content: Array[Byte]) => {
      val (f, _) =
        ArrowCodec.decodeFeatures(call(path, device, numThreads, content, NativeBridge.featurize))(
          0
        )
      if (f == null) null else f.toSeq
    }
    spark.udf.register(s"${name}_features", features, ArrayType(DoubleType, containsNull = false))
  }

  private def call(
      source: ModelSource,
      device: String,
      threads: Int,
      content: Array[Byte],
      native: (Long, Array[Byte], String) => Array[Byte]
  ): Array[Byte] = {
    val input = ArrowCodec.encode(InputKind.Binary, Array[Any](content))
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
        native(handle, input, """{"top_k": 1}""")
      case None => // evaluated outside a task (e.g. on the driver): a handle for this call
        val h = open()
        try native(h, input, """{"top_k": 1}""")
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
