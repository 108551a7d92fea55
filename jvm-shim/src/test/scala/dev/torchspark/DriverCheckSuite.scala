package dev.torchspark

import java.nio.file.{Files, Path}

import org.apache.spark.sql.DataFrame
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** What the driver checks in `transform` and `TorchSpark.register` before any job runs: on a real
  * local[2] session, with the real .so and real models.
  */
object DriverCheckSuite {
  @BeforeClass def setUp(): Unit = SparkTest.imageFixtures()
}

class DriverCheckSuite extends SparkSuite {
  import DriverCheckSuite._

  private val fixtures = SparkTest.fixtures
  private def images: DataFrame =
    spark.read
      .format("binaryFile")
      .option("pathGlobFilter", "digit_0*.png")
      .load(
        fixtures.resolve("images").toString
      )

  /** A copy of the fixture model in a folder of its own, with `spec` as its model.json (None: no
    * spec).
    */
  private def modelWith(spec: Option[String]): Path = {
    val d = TestDirs.dir("torchspark-check")
    Files.copy(fixtures.resolve("resnet20.pt"), d.resolve("model.pt"))
    spec.foreach(s => Files.write(d.resolve("model.json"), s.getBytes("UTF-8")))
    d.resolve("model.pt")
  }

  private def jobs: Int = spark.sparkContext.statusTracker.getJobIdsForGroup(null).length

  /** `f`'s exception, of class `T`, thrown before any Spark job started. */
  private def beforeAnyJob[T <: Throwable](cls: Class[T])(f: => Any): T = {
    val before = jobs
    val e = assertThrows(cls, () => { f; () })
    assertEquals("a Spark job ran", before, jobs)
    e
  }

  private def both(path: String, device: String = "cpu") = Seq(
    () => new ImageScorer().setModelPath(path).setInputCol("content").setDevice(device),
    () => new ImageFeaturizer().setModelPath(path).setInputCol("content").setDevice(device)
  ).map(_())

  @Test def missingModelFailsOnTheDriverNamingThePath(): Unit = {
    val df = images
    for (t <- both("/no/such/dir/model.pt")) {
      val e = beforeAnyJob(classOf[ModelLoadException])(t.transform(df))
      assertTrue(e.getMessage, e.getMessage.contains("model file /no/such/dir/model.pt not found"))
      assertTrue(e.getMessage, e.getMessage.contains(NativeLoader.hostName()))
    }
  }

  @Test def missingSpecIsASpecErrorNamingIt(): Unit = {
    val m = modelWith(None)
    val df = images
    for (t <- both(m.toString)) {
      val e = beforeAnyJob(classOf[ModelSpecException])(t.transform(df))
      assertTrue(e.getMessage, e.getMessage.contains(m.resolveSibling("model.json").toString))
    }
  }

  @Test def specThatDoesNotParseIsASpecErrorNamingIt(): Unit = {
    val df = images
    for (bad <- Seq("""{"input": {"height": 32, "width": 32""", """{"input": {"heigth": 32}}""")) {
      val m = modelWith(Some(bad))
      for (t <- both(m.toString)) {
        val e = beforeAnyJob(classOf[ModelSpecException])(t.transform(df))
        assertTrue(e.getMessage, e.getMessage.contains(m.resolveSibling("model.json").toString))
      }
    }
  }

  @Test def cudaOnThisGpuLessHostIsADeviceErrorNamingTheHost(): Unit = {
    val df = images
    for (t <- both(fixtures.resolve("resnet20.pt").toString, "cuda:0")) {
      val e = beforeAnyJob(classOf[DeviceException])(t.transform(df))
      assertTrue(e.getMessage, e.getMessage.contains("cuda:0"))
      assertTrue(e.getMessage, e.getMessage.contains("no CUDA device"))
      assertTrue(e.getMessage, e.getMessage.contains(s"on host ${NativeLoader.hostName()}"))
    }
  }

  @Test def unknownDeviceStringIsRefusedWhenSet(): Unit = {
    val e = assertThrows(
      classOf[IllegalArgumentException],
      () => new ImageScorer().setDevice("gpu")
    )
    assertTrue(e.getMessage, e.getMessage.contains("gpu"))
  }

  @Test def sqlUdfRegistrationChecksOnTheDriver(): Unit = {
    val model = fixtures.resolve("resnet20.pt").toString
    val e1 = beforeAnyJob(classOf[ModelLoadException])(
      TorchSpark.register(spark, "u1", "/no/such/model.pt")
    )
    assertTrue(e1.getMessage, e1.getMessage.contains("/no/such/model.pt"))
    val m = modelWith(Some("[]"))
    val e2 = beforeAnyJob(classOf[ModelSpecException])(TorchSpark.register(spark, "u2", m.toString))
    assertTrue(e2.getMessage, e2.getMessage.contains("model.json"))
    val e3 = beforeAnyJob(classOf[DeviceException])(TorchSpark.register(spark, "u3", model, "gpu"))
    assertTrue(e3.getMessage, e3.getMessage.contains("device `gpu`"))
    val e4 =
      beforeAnyJob(classOf[DeviceException])(TorchSpark.register(spark, "u4", model, "cuda:0"))
    assertTrue(e4.getMessage, e4.getMessage.contains("no CUDA device"))
  }

  @Test def driverSpecCheckIsTheNativeDescribeAndNamesTheFile(): Unit = {
    // The check a driver runs outside local mode (no model loaded): the native `describe`, so it
    // is exactly as strict as the load on every spec, and names the file and the field.
    val specs = Files.list(fixtures).toArray.map(_.asInstanceOf[Path]).filter { p =>
      p.toString.endsWith(".json") && Seq(".pt", ".pt2").exists { ext =>
        Files.exists(p.resolveSibling(p.getFileName.toString.stripSuffix(".json") + ext))
      }
    }
    assertTrue(specs.mkString(", "), specs.length >= 2)
    specs.foreach(p =>
      DriverCheck.checkSpec(p.toString, new String(Files.readAllBytes(p), "UTF-8"))
    )
    val cases = Seq(
      """{"input": {"height": 32""" -> "EOF",
      "[1, 2]" -> "",
      "{}" -> "input",
      """{"input": {"height": 32}}""" -> "width",
      """{"input": {"height": "32", "width": 32}}""" -> "32",
      """{"input": {"height": 32, "width": -1}}""" -> "-1",
      """{"input": {"height": 32.5, "width": 32}}""" -> "32.5",
      """{"input": {"height": 32, "width": 32}, "oops": 1}""" -> "oops"
    )
    for ((text, reason) <- cases) {
      val e = assertThrows(classOf[ModelSpecException], () => DriverCheck.checkSpec("x.json", text))
      assertTrue(e.getMessage, e.getMessage.startsWith("model spec x.json: "))
      assertTrue(e.getMessage, e.getMessage.contains(reason))
    }
  }

  @Test def validModelPassesAndItsTasksReuseTheDriverLoad(): Unit = {
    val m = modelWith(
      Some(new String(Files.readAllBytes(fixtures.resolve("resnet20.json")), "UTF-8"))
    )
    val s = new ImageScorer().setModelPath(m.toString).setInputCol("content")
    val out = s.transform(images) // local mode: the model is loaded here, on the driver
    val loads = NativeBridge.loadCount()
    assertEquals(10L, out.count())
    assertEquals("the tasks loaded it again", loads, NativeBridge.loadCount())
  }
}
