package dev.torchspark

import java.nio.file.Files
import java.util.concurrent.{CountDownLatch, TimeUnit}
import java.util.concurrent.atomic.AtomicInteger

import com.fasterxml.jackson.databind.ObjectMapper
import org.apache.spark.{SparkException, TaskContext}
import org.apache.spark.ml.linalg.Vector
import org.apache.spark.resource.ResourceInformation
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.types._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** The executor's shared engine as the transformers use it (docs/design/shared-engine.md §2, §4):
  * shared equals per-task, a killed job leaves the engine usable, batchSize 0, GPU device choice.
  * Real local[2] SparkSession, the real .so, the ResNet-20 and diabetes MLP fixtures.
  */
object EngineSuite {
  @BeforeClass def setUp(): Unit = {
    SparkTest.imageFixtures()
    SparkTest.generalFixtures()
  }

  def resnet: String = SparkTest.fixtures.resolve("resnet20.pt").toString

  /** ~200 rows: the 40 fixture PNG/JPEG files five times, in 4 partitions. */
  lazy val images: DataFrame = {
    val one =
      SparkTest.session.read
        .format("binaryFile")
        .load(SparkTest.fixtures.resolve("images").toString)
    (1 until 5).foldLeft(one)((df, _) => df.union(one)).repartition(4).cache()
  }

  // The kill test's task and driver meet here (local mode: one JVM).
  val firstBatch = new CountDownLatch(1)
  val batchesDone = new AtomicInteger(0)
  val tasksRunning = new AtomicInteger(0)
}

class EngineSuite extends SparkSuite {
  import EngineSuite._

  /** Each row's PyTorch numbers (tests/fixtures/out/expected.json). */
  private def assertPyTorch(rows: Array[(String, Double, Seq[Double])]): Unit = {
    assertEquals(200, rows.length)
    rows.foreach { case (path, y, p) =>
      val file = path.substring(path.lastIndexOf('/') + 1)
      val e =
        SparkTest.doubles(SparkTest.expected(file).get("resnet20").get("probability"))
      assertTrue(file, SparkTest.maxDiff(p.toArray, e) <= SparkTest.tol(file))
      assertEquals(file, e.indexOf(e.max).toDouble, y, 0.0)
    }
  }

  private def scored(
      df: DataFrame,
      engine: String,
      batchSize: Int
  ): Array[(String, Double, Seq[Double])] =
    new ImageScorer()
      .setModelPath(resnet)
      .setInputCol("content")
      .setBatchSize(batchSize)
      .setEngine(engine)
      .transform(df)
      .select("path", "prediction", "probability")
      .collect()
      .map(r => (r.getString(0), r.getDouble(1), r.getAs[Vector](2).toArray.toSeq))
      .sortBy(r => (r._1, r._2))

  private def assertAlike(
      a: Array[(String, Double, Seq[Double])],
      b: Array[(String, Double, Seq[Double])]
  ): Unit = {
    assertEquals(a.length, b.length)
    a.zip(b).foreach { case ((pa, ya, qa), (pb, yb, qb)) =>
      assertEquals(pa, pb)
      assertEquals(pa, ya, yb, 0.0)
      val diff = qa.zip(qb).map { case (x, y) => math.abs(x - y) }.max
      assertTrue(s"$pa: max |diff| $diff", diff <= 1e-5)
    }
  }

  @Test def sharedAndPerTaskScoreAlike(): Unit = {
    val shared = scored(images, "shared", 16)
    assertAlike(scored(images, "per-task", 16), shared)
    assertPyTorch(shared)

    val d = SparkTest.diabetes
    val rows = (0 until d.get("X").size).map { i =>
      Row(i, SparkTest.doubles(d.get("X").get(i)).toSeq)
    }
    val schema = StructType(
      Seq(StructField("id", IntegerType), StructField("x", ArrayType(DoubleType)))
    )
    val patients = spark.createDataFrame(spark.sparkContext.parallelize(rows, 4), schema)
    def mlp(engine: String): Map[Int, Double] =
      new TorchModel()
        .setModelPath(SparkTest.generalModel("diabetes_mlp.pt"))
        .setInputCols(Array("features=x"))
        .setBatchSize(32)
        .setEngine(engine)
        .transform(patients)
        .select("id", "prediction")
        .collect()
        .map(r => r.getInt(0) -> r.getDouble(1))
        .toMap
    val (s, t) = (mlp("shared"), mlp("per-task"))
    assertEquals(442, s.size)
    assertEquals(s.keySet, t.keySet)
    s.foreach { case (id, v) =>
      assertEquals(s"row $id", t(id), v, 1e-5)
      assertEquals(s"row $id vs PyTorch", SparkTest.pred(id), v, 1e-5)
    }
  }

  @Test def batchSizeZeroIsAuto(): Unit = {
    val scorer = new ImageScorer().setModelPath(resnet).setInputCol("content").setBatchSize(0)
    val out = scorer.transform(images).select("path", "prediction", "probability")
    assertPyTorch(
      out
        .collect()
        .map(r => (r.getString(0), r.getDouble(1), r.getAs[Vector](2).toArray.toSeq))
    )
    // One forward pass per `auto` rows of each partition.
    val h = NativeRunner.openModel(NativeRunner.configJson(resnet, "cpu", 1, "fp32"))
    val size =
      try NativeBridge.autoBatchSize(h)
      finally NativeBridge.closeModel(h)
    assertTrue(s"auto batch size $size", size >= 1)
    val perPartition = images.rdd.mapPartitions(it => Iterator(it.size)).collect()
    val m = scorer.metrics.values
    assertEquals(perPartition.map(n => (n + size - 1) / size).sum.toLong, m("engineBatches"))
    assertTrue(m.toString, m("engineBatchRows") >= 200L)
    val e = intercept[IllegalArgumentException](scorer.setBatchSize(-1))
    assertTrue(e.getMessage, e.getMessage.contains("batchSize"))
    intercept[IllegalArgumentException](scorer.setEngine("pooled"))
    intercept[IllegalArgumentException](scorer.setEngineTimeoutMs(0L))
  }

  @Test def killedJobLeavesEngineUsable(): Unit = {
    val png = Files.readAllBytes(SparkTest.fixtures.resolve("images/digit_03_label3.png"))
    val config =
      s"""{"model_path": ${NativeRunner.json(resnet)}, "device": "cpu", "num_threads": 1, """ +
        """"precision": "fp32", "engine": {"mode": "shared", "cores": 2, "task_cpus": 1, """ +
        """"timeout_ms": 60000, "debug_delay_ms": 50}}"""
    val groups = 2000
    val sc = spark.sparkContext
    val job = new Thread(() => {
      sc.setJobGroup("engine-kill", "kill test", interruptOnCancel = true)
      try {
        sc.parallelize(0 until 2, 2)
          .mapPartitions { _ =>
            val handle = NativeRunner.openModel(config)
            TaskContext.get().addTaskCompletionListener[Unit](_ => NativeBridge.closeModel(handle))
            tasksRunning.incrementAndGet()
            TaskContext.get().addTaskCompletionListener[Unit](_ => tasksRunning.decrementAndGet())
            val input = SparkTest.binaryBatch(Array.fill[Any](4)(png))
            val pipeline = new TaskPipeline(handle, TaskPipeline.Score, true, 60000L)
            pipeline
              .run[Int](
                Iterator.range(0, groups),
                _ => input,
                i => s"""{"batch_size": 4, "row_offset": ${i * 4}, "max_pixels": 0, "top_k": 1}"""
              )
              .map { r =>
                batchesDone.incrementAndGet()
                firstBatch.countDown()
                r._1
              }
          }
          .count()
        ()
      } catch { case _: SparkException => () }
    })
    job.start()
    assertTrue("no batch came back", firstBatch.await(30, TimeUnit.SECONDS))
    val cancelled = System.nanoTime()
    sc.cancelJobGroup("engine-kill")
    job.join(30000)
    assertFalse("the killed job is still running", job.isAlive)
    // The driver gives up on a cancelled job at once; the tasks must stop too (no task would
    // finish its 2000 batches in under 10 s).
    while (tasksRunning.get > 0 && System.nanoTime() - cancelled < 10000000000L) Thread.sleep(20)
    val seconds = (System.nanoTime() - cancelled) / 1e9
    assertEquals(s"tasks still running after $seconds s", 0, tasksRunning.get)
    assertTrue(s"the kill took $seconds s", seconds < 5)
    assertTrue(s"${batchesDone.get} batches", batchesDone.get < groups)
    // Nothing of the killed tasks stays queued (cancelTask), and the engine scores right.
    val h = NativeRunner.openModel(config)
    try {
      val mapper = new ObjectMapper()
      def queued = mapper.readTree(NativeBridge.engineStats(h)).get("queued_rows").asLong
      val until = System.nanoTime() + 5000000000L
      while (queued != 0 && System.nanoTime() < until) Thread.sleep(50)
      assertEquals(NativeBridge.engineStats(h), 0L, queued)
    } finally NativeBridge.closeModel(h)
    assertPyTorch(scored(images, "shared", 16))
  }

  @Test def cudaWithoutGpuFailsFast(): Unit = {
    val t0 = System.nanoTime()
    val df =
      spark.read.format("binaryFile").load(SparkTest.fixtures.resolve("images").toString)
    val e = intercept[DeviceException](
      new ImageScorer()
        .setModelPath(resnet)
        .setInputCol("content")
        .setDevice("cuda")
        .transform(df)
        .count()
    )
    assertTrue(e.getMessage, e.getMessage.contains(NativeLoader.hostName()))
    assertTrue("took too long", (System.nanoTime() - t0) / 1e9 < 15)
  }

  @Test def gpuDeviceMapping(): Unit = {
    def gpu(addresses: String*): Option[Seq[String]] =
      Some(new ResourceInformation("gpu", addresses.toArray).addresses.toSeq)
    val f = ExecutorCores.gpuDevice _
    assertEquals("cpu", f("cpu", gpu("1"), 2, false, "n1"))
    assertEquals("cuda:1", f("cuda:1", None, 0, false, "n1"))
    assertEquals("cuda:1", f("cuda", gpu("1"), 2, false, "n1"))
    assertEquals("cuda:0", f("cuda", gpu("0", "1"), 4, false, "n1"))
    assertEquals("cuda:3", f("cuda", gpu("3"), Int.MaxValue, false, "n1"))
    // The container shows only its GPU, whose address is the host's.
    assertEquals("cuda:0", f("cuda", gpu("3"), 1, false, "n1"))
    assertEquals("cuda:0", f("cuda", None, 1, true, "n1"))
    val past = intercept[DeviceException](f("cuda", gpu("3"), 2, false, "node-7"))
    assertTrue(
      past.getMessage,
      past.getMessage.contains("node-7") && past.getMessage.contains("`3`")
    )
    val none = intercept[DeviceException](f("cuda", None, 1, false, "node-7"))
    Seq("node-7", "spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount").foreach {
      s =>
        assertTrue(none.getMessage, none.getMessage.contains(s))
    }
    // And the cores the engine is sized from.
    val cores = ExecutorCores.coresFrom _
    assertEquals(6, cores(Some("6"), Some("local[2]"), 8))
    assertEquals(2, cores(None, Some("local[2]"), 8))
    assertEquals(3, cores(None, Some("local[3, 2]"), 8))
    assertEquals(8, cores(None, Some("local[*]"), 8))
    assertEquals(1, cores(None, Some("local"), 8))
    assertEquals(8, cores(Some("x"), Some("yarn"), 8))
    assertEquals(8, cores(None, None, 8))
  }

  @Test def engineSizedFromTheExecutorAndShownByTheDoctor(): Unit = {
    // local[2]: 2 cores, spark.task.cpus 1 (outside a task), the default timeout.
    val config = NativeRunner.configJson(resnet, "cpu", 1, "fp32")
    assertTrue(
      config,
      config.endsWith(
        """"engine": {"mode": "shared", "cores": 2, "task_cpus": 1, "timeout_ms": 600000}}"""
      )
    )
    val row = TorchSpark.doctor(spark).head
    assertTrue(
      row.engine,
      row.engine.matches(
        """engine: \S+, \d+ workers x \d+ threads """ +
          """\(cores \d+, task cpus 1\)"""
      )
    )
    assertTrue(row.toJson, row.toJson.contains("\"engine\":\"engine: "))
  }

  private def intercept[E <: Throwable](body: => Any)(implicit m: scala.reflect.ClassTag[E]): E =
    try {
      body
      throw new AssertionError(s"expected ${m.runtimeClass.getSimpleName}")
    } catch {
      case e: Throwable if m.runtimeClass.isInstance(e) => e.asInstanceOf[E]
      case e: Throwable if e.getCause != null && m.runtimeClass.isInstance(e.getCause) =>
        e.getCause.asInstanceOf[E]
    }
}
