package dev.torchspark

import java.io.File
import java.nio.file.{Files, Path, StandardCopyOption}
import java.util.concurrent.{Callable, Executors}

import org.apache.hadoop.conf.Configuration
import org.apache.spark.sql.SparkSession
import org.junit.{AfterClass, BeforeClass, Test}
import org.junit.Assert._

/** Models in cluster storage through the real Hadoop client (its local file system stands in for
  * HDFS here; the cluster tests use MiniDFS), the node cache and its lock, the image reader and the
  * doctor, on a real local[2] session.
  */
object ModelSourceSuite {
  var spark: SparkSession = _

  @BeforeClass def setUp(): Unit = {
    TorchSparkSuite.setUp() // fixtures, and the suite's local[2] session
    spark = TorchSparkSuite.spark
  }

  @AfterClass def tearDown(): Unit = TorchSparkSuite.tearDown()
}

class ModelSourceSuite {
  import ModelSourceSuite._

  private val fixtures = TorchSparkSuite.fixtures

  private def store(): Path = {
    val d = Files.createTempDirectory("torchspark-store")
    Seq("resnet20.pt", "resnet20.json").foreach { f =>
      Files.copy(fixtures.resolve(f), d.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    d
  }

  private def withCache[T](f: File => T): T = {
    val dir = Files.createTempDirectory("torchspark-cache").toFile
    System.setProperty("torchspark.cache.dir", dir.toString)
    try f(dir)
    finally System.clearProperty("torchspark.cache.dir")
  }

  @Test def copiesARemoteModelOncePerVersionAndReusesIt(): Unit = withCache { cache =>
    val d = store()
    val uri = s"file://${d.resolve("resnet20.pt")}"
    val conf = new Configuration()
    val first = ModelSource.fetch(uri, conf)
    assertTrue(first.startsWith(cache.toString))
    assertArrayEquals(
      Files.readAllBytes(d.resolve("resnet20.pt")),
      Files.readAllBytes(new File(first).toPath)
    )
    assertTrue(new File(new File(first).getParentFile, "resnet20.json").isFile)
    val stamp = new File(first).lastModified()
    assertEquals(first, ModelSource.fetch(uri, conf))
    assertEquals("not copied again", stamp, new File(first).lastModified())
    // A new version of the model (other modification time) is a new cache entry.
    d.resolve("resnet20.pt").toFile.setLastModified(stamp - 60000)
    val second = ModelSource.fetch(uri, conf)
    assertNotEquals(first, second)
  }

  @Test def concurrentFetchesShareOneCopy(): Unit = withCache { _ =>
    val uri = s"file://${store().resolve("resnet20.pt")}"
    val pool = Executors.newFixedThreadPool(8)
    try {
      val futures = (0 until 8).map { _ =>
        pool.submit(new Callable[String] {
          def call(): String = ModelSource.fetch(uri, new Configuration())
        })
      }
      val paths = futures.map(_.get()).toSet
      assertEquals(1, paths.size)
      assertEquals(Files.size(fixtures.resolve("resnet20.pt")), new File(paths.head).length())
    } finally pool.shutdown()
  }

  @Test def aMissingModelOrSpecNamesTheUri(): Unit = withCache { _ =>
    val d = store()
    val missing = s"file://$d/nope.pt"
    val e = assertThrows(
      classOf[ModelLoadException],
      () => ModelSource.fetch(missing, new Configuration())
    )
    assertTrue(e.getMessage, e.getMessage.contains(s"model $missing not found"))
    Files.delete(d.resolve("resnet20.json"))
    val uri = s"file://$d/resnet20.pt"
    val e2 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(
      e2.getMessage,
      e2.getMessage.contains(
        s"model spec (it sits beside the model) file://$d/resnet20.json not found"
      )
    )
  }

  @Test def unreachableStorageFailsOnTheDriverBeforeTheJob(): Unit = {
    val port = {
      val s = new java.net.ServerSocket(0, 1, java.net.InetAddress.getByName("127.0.0.1"));
      try s.getLocalPort
      finally s.close()
    }
    val uri = s"hdfs://127.0.0.1:$port/models/resnet20.pt"
    spark.sparkContext.hadoopConfiguration.set("ipc.client.connect.max.retries", "0")
    val jobsBefore = spark.sparkContext.statusTracker.getJobIdsForGroup(null).length
    val images = TorchSpark.readImages(spark, fixtures.resolve("images").toString)
    val e = assertThrows(
      classOf[ModelLoadException],
      () => new ImageScorer().setModelPath(uri).setInputCol("content").transform(images)
    )
    assertTrue(e.getMessage, e.getMessage.contains(s"cannot reach model $uri"))
    assertEquals(
      "no job ran",
      jobsBefore,
      spark.sparkContext.statusTracker.getJobIdsForGroup(null).length
    )
  }

  @Test def readImagesGivesAFewPartitionsPerSlot(): Unit = {
    val dir = fixtures.resolve("images").toString
    val files = new File(dir).listFiles().length
    // Spark's default open cost, and splits small enough that every file is its own partition,
    // as 10,000 files are with the defaults.
    spark.conf.set("spark.sql.files.openCostInBytes", (4L << 20).toString)
    spark.conf.set("spark.sql.files.maxPartitionBytes", (4L << 20).toString)
    try {
      assertEquals(files, spark.read.format("binaryFile").load(dir).rdd.getNumPartitions)
      val df = TorchSpark.readImages(spark, dir)
      assertEquals(files.toLong, df.count())
      assertEquals(math.min(files, 2 * 3), df.rdd.getNumPartitions)
    } finally {
      spark.conf.unset("spark.sql.files.openCostInBytes")
      spark.conf.unset("spark.sql.files.maxPartitionBytes")
    }
    val pngs = new File(dir).listFiles().count(_.getName.endsWith(".png"))
    assertEquals(pngs.toLong, TorchSpark.readImages(spark, dir, "*.png").count())
  }

  @Test def doctorChecksEveryExecutor(): Unit = {
    val rows = TorchSpark.doctor(spark)
    assertEquals(1, rows.size) // local mode: the driver is the one executor
    val r = rows.head
    assertTrue(r.status, r.ok)
    assertEquals("driver", r.executor)
    assertTrue(r.status, r.status.contains("tiny model"))
    assertTrue(r.glibc, r.glibc.matches("node has \\d+\\.\\d+; torchspark needs \\d+\\.\\d+"))
  }
}
