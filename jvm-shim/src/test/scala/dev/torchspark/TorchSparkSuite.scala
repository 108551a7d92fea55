package dev.torchspark

import java.nio.file.{Files, StandardCopyOption}

import scala.jdk.CollectionConverters._

import com.fasterxml.jackson.databind.{JsonNode, ObjectMapper}
import org.apache.spark.ml.evaluation.MulticlassClassificationEvaluator
import org.apache.spark.ml.linalg.{SQLDataTypes, Vector}
import org.apache.spark.sql.{DataFrame, Row}
import org.apache.spark.sql.functions._
import org.apache.spark.sql.types._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** ImageScorer and ImageFeaturizer on the image fixtures: the shared local[2] session
  * ([[SparkSuite]]), the real .so, real TorchScript fixtures, PyTorch's numbers.
  */
object TorchSparkSuite {
  @BeforeClass def setUp(): Unit = SparkTest.imageFixtures()
}

class TorchSparkSuite extends SparkSuite {
  import SparkTest._

  private def model = fixtures.resolve("resnet20.pt").toString
  private def images = fixtures.resolve("images").toString
  private def binary(glob: String = "*"): DataFrame =
    spark.read.format("binaryFile").option("pathGlobFilter", glob).load(images)
  private def name(path: String) = path.substring(path.lastIndexOf('/') + 1)

  private def scorer(input: String) =
    new ImageScorer().setModelPath(model).setInputCol(input).setBatchSize(16)

  private def checkProbabilities(df: DataFrame, nameCol: String): Int = {
    val rows = df.select(col(nameCol), col("probability"), col("prediction")).collect()
    rows.foreach { r =>
      val file = name(r.getString(0))
      val p = r.getAs[Vector](1).toArray
      val e = doubles(expected(file).get("resnet20").get("probability"))
      assertTrue(s"$file: diff ${maxDiff(p, e)}", maxDiff(p, e) <= tol(file))
      assertEquals(file, e.indexOf(e.max).toDouble, r.getDouble(2), 0.0)
    }
    rows.length
  }

  @Test def scoresBinaryFilesLikePyTorch(): Unit = {
    val n = checkProbabilities(scorer("content").transform(binary()), "path")
    assertEquals(expected.size, n)
  }

  @Test def imageStructInBgrMatchesPyTorch(): Unit = {
    val df = spark.read.format("image").option("pathGlobFilter", "digit_0*.png").load(images)
    val n = checkProbabilities(scorer("image").transform(df), "image.origin")
    assertEquals(10, n)
  }

  @Test def floatArraysAreTheModelInput(): Unit = {
    val rows = expected.toSeq.take(6).map { case (f, n) =>
      Row(f, doubles(n.get("resnet20").get("input")).map(_.toFloat).toSeq)
    }
    val schema = "path string, input array<float>"
    val df = spark.createDataFrame(
      spark.sparkContext.parallelize(rows),
      org.apache.spark.sql.types.StructType.fromDDL(schema)
    )
    assertEquals(6, checkProbabilities(scorer("input").transform(df), "path"))
  }

  @Test def scoreColumnsHaveTheDecidedNamesAndTypes(): Unit = {
    // The score preset's columns (plan of issue 26), whatever today's native score bytes are.
    val topK = ArrayType(
      StructType(
        Seq(
          StructField("index", IntegerType, nullable = false),
          StructField("label", StringType),
          StructField("probability", DoubleType, nullable = false)
        )
      )
    )
    val s = scorer("content").setTopK(3)
    val df = binary("digit_0*.png")
    val added = s.transformSchema(df.schema).fields.drop(df.schema.size)
    assertEquals(
      Seq(
        "prediction" -> DoubleType,
        "probability" -> SQLDataTypes.VectorType,
        "predicted_label" -> StringType,
        "top_k" -> topK,
        "predictedLabel" -> StringType, // the old names: copies, for one release
        "topK" -> topK
      ),
      added.map(f => f.name -> f.dataType).toSeq
    )
    val out = s.transform(df)
    assertEquals(s.transformSchema(df.schema), out.schema)
    val labels = json(fixtures.resolve("resnet20.json")).get("labels")
    val rows = out.collect()
    assertEquals(10, rows.length)
    rows.foreach { r =>
      val p = r.getAs[Vector]("probability").toArray
      val best = r.getAs[Double]("prediction").toInt
      assertEquals(p.indexOf(p.max), best)
      assertEquals(labels.get(best).asText, r.getAs[String]("predicted_label"))
      // The 3 best, best first: each its class, label and probability (the float32 score).
      val top = r.getSeq[Row](r.fieldIndex("top_k"))
      val order = p.indices.sortBy(i => (-p(i), i)).take(3)
      assertEquals(order, top.map(_.getInt(0)))
      top.foreach { t =>
        assertEquals(labels.get(t.getInt(0)).asText, t.getString(1))
        assertEquals(p(t.getInt(0)), t.getDouble(2), 0.0)
      }
      assertEquals(r.getAs[String]("predicted_label"), r.getAs[String]("predictedLabel"))
      assertEquals(top, r.getSeq[Row](r.fieldIndex("topK")))
    }
  }

  @Test def oldColumnNamesAreAddedOnlyWhileTheirParamsAreAtTheDefaults(): Unit = {
    val df = binary("digit_0*.png")
    def added(s: ImageScorer) = s.transform(df).columns.toSeq.diff(df.columns.toSeq)
    val all = Seq("prediction", "probability", "predicted_label", "top_k")
    assertEquals(all ++ Seq("predictedLabel", "topK"), added(scorer("content")))
    // Set, even to the default name: the user chose the new column, and gets no copy.
    assertEquals(
      all :+ "topK",
      added(scorer("content").setPredictedLabelCol("predicted_label"))
    )
    assertEquals(
      Seq("prediction", "probability", "predicted_label", "best") :+ "predictedLabel",
      added(scorer("content").setTopKCol("best"))
    )
    assertEquals(
      Seq("p", "q", "name", "best"),
      added(
        scorer("content")
          .setPredictionCol("p")
          .setProbabilityCol("q")
          .setPredictedLabelCol("name")
          .setTopKCol("best")
      )
    )
    // A column of the old name already in the data stays as it is.
    val mine = df.withColumn("topK", lit("mine"))
    val out = scorer("content").transform(mine)
    assertEquals(Seq("mine"), out.select("topK").distinct().collect().map(_.getString(0)).toSeq)
    assertEquals(1, out.columns.count(_ == "topK"))
    // The copies follow the output through handleInvalid=keep (null on a bad row too).
    val kept = scorer("content").setHandleInvalid("keep")
    val withError = kept.transform(df).columns.toSeq.diff(df.columns.toSeq)
    assertEquals(all ++ Seq("error", "predictedLabel", "topK"), withError)
  }

  @Test def torchModelRunsAVersionOneSpecFromFilesAndFloatArraysLikePyTorch(): Unit = {
    // The predict preset of a v1 spec: `output`, the class vector (softmax of the logits), from
    // encoded images and from the preprocessed C x H x W values of an array<float> column.
    val files = expected.keys.filter(_.endsWith(".png")).toSeq.sorted.take(6)
    val rows = files.map { f =>
      Row(f, doubles(expected(f).get("resnet20").get("input")).map(_.toFloat).toSeq)
    }
    val arrays = spark.createDataFrame(
      spark.sparkContext.parallelize(rows),
      StructType.fromDDL("path string, pixels array<float>")
    )
    val fromArrays = new TorchModel()
      .setModelPath(model)
      .setInputCols(Array("image=pixels"))
      .transform(arrays)
    val fromFiles = new TorchModel()
      .setModelPath(model)
      .setInputCols(Array("image=content"))
      .transform(binary("*.png"))
    assertEquals(SQLDataTypes.VectorType, fromArrays.schema("output").dataType)
    for (df <- Seq(fromArrays, fromFiles)) {
      val got = df.select("path", "output").collect()
      assertTrue(got.length >= files.size)
      got.foreach { r =>
        val file = name(r.getString(0))
        val e = doubles(expected(file).get("resnet20").get("probability"))
        assertTrue(s"$file: diff", maxDiff(r.getAs[Vector](1).toArray, e) <= 1e-5)
      }
    }
  }

  @Test def featurizesLikePyTorch(): Unit = {
    val f = new ImageFeaturizer().setModelPath(model).setInputCol("content")
    val rows = f.transform(binary("*.png")).select("path", "features").collect()
    rows.foreach { r =>
      val file = name(r.getString(0))
      val e = doubles(expected(file).get("resnet20").get("features"))
      val scale = math.max(1.0, e.map(math.abs).max)
      assertTrue(file, maxDiff(r.getAs[Vector](1).toArray, e) <= 1e-5 * scale)
    }
    assertTrue(rows.length > 30)
  }

  @Test def aotInductorPackagesScoreAndFeaturizeLikePyTorch(): Unit = {
    val pt2 = fixtures.resolve("resnet20_aoti.pt2").toString
    val scored = new ImageScorer().setModelPath(pt2).setInputCol("content").setBatchSize(7)
    val rows = scored.transform(binary()).select("path", "probability").collect()
    assertEquals(expected.size, rows.length)
    rows.foreach { r =>
      val file = name(r.getString(0))
      val e = doubles(expected(file).get("resnet20_aoti").get("probability"))
      assertTrue(s"$file: diff", maxDiff(r.getAs[Vector](1).toArray, e) <= tol(file))
    }
    // featurize {"method": "embed"}: the package's second model.
    val f = new ImageFeaturizer()
      .setModelPath(fixtures.resolve("tuple_net_aoti.pt2").toString)
      .setInputCol("content")
    f.transform(binary("*.png")).select("path", "features").collect().foreach { r =>
      val file = name(r.getString(0))
      val e = doubles(expected(file).get("tuple_net_aoti").get("features"))
      assertTrue(file, maxDiff(r.getAs[Vector](1).toArray, e) <= 1e-5)
    }
  }

  @Test def loadsTheModelOncePerExecutor(): Unit = {
    val dir = TestDirs.dir("torchspark-once")
    Seq("resnet20.pt", "resnet20.json").foreach { f =>
      Files.copy(fixtures.resolve(f), dir.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    val before = TorchSpark.nativeModelLoads()
    val s = new ImageScorer()
      .setModelPath(dir.resolve("resnet20.pt").toString)
      .setInputCol("content")
      .setBatchSize(4)
    val out = s.transform(binary("*.png").repartition(4))
    assertEquals(4, out.rdd.getNumPartitions)
    assertEquals(35L, out.count())
    assertEquals(35L, out.filter(col("prediction").isNotNull).count())
    assertEquals(1L, TorchSpark.nativeModelLoads() - before)
    assertEquals(1L, s.metrics.modelLoads.value.longValue)
    assertTrue(s.metrics.rowsScored.value >= 35L)
  }

  @Test def reportsWhereTheTimeWent(): Unit = {
    for (engine <- Seq("per-task", "shared")) {
      val s = scorer("content").setBatchSize(8).setEngine(engine)
      s.transform(binary("*.png").repartition(2)).write.format("noop").mode("overwrite").save()
      val m = s.metrics.values
      assertEquals(35L, m("rowsScored"))
      assertEquals("imagesScored is rowsScored's alias", m("rowsScored"), m("imagesScored"))
      assertTrue(m.toString, m("forwardTimeMs") > 0L && m("bridgeTimeMs") >= 0L)
      assertEquals(m.keySet, s.metrics.javaValues.keySet.asScala.toSet)
      assertEquals(m.toString, 0L, m("resizeTimeMs")) // 32x32 PNGs, a spec without resize
      if (engine == "per-task")
        // Native time holds preprocess and forward (each task floors its sums to milliseconds).
        assertTrue(m.toString, m("nativeTimeMs") + 2 >= m("preprocessTimeMs") + m("forwardTimeMs"))
      else {
        // The forward runs on the engine's workers, beside the task thread: native time holds
        // preprocessing (in submit) and the time blocked waiting for results, not the forward.
        assertTrue(m.toString, m("nativeTimeMs") + 2 >= m("preprocessTimeMs") + m("waitTimeMs"))
        assertTrue(m.toString, m("engineBatches") > 0L && m("engineBatchRows") >= 35L)
      }
    }
  }

  @Test def splitsPreprocessingIntoDecodeAndResize(): Unit = {
    // Real JPEGs, landscape and portrait, that a shorter-side resize (32) then a crop must shrink.
    val dir = TestDirs.dir("torchspark-resize")
    val imgs = Files.createDirectories(dir.resolve("jpegs"))
    val rng = new scala.util.Random(7)
    for (i <- 0 until 16) {
      val (w, h) = if (i % 2 == 0) (640, 480) else (480, 640)
      val img = new java.awt.image.BufferedImage(w, h, java.awt.image.BufferedImage.TYPE_INT_RGB)
      for (y <- 0 until h; x <- 0 until w)
        img.setRGB(x, y, ((x * 255 / w) << 16) | ((y * 255 / h) << 8) | rng.nextInt(256))
      assertTrue(javax.imageio.ImageIO.write(img, "jpg", imgs.resolve(f"img_$i%02d.jpg").toFile))
    }
    Files.copy(fixtures.resolve("resnet20.pt"), dir.resolve("model.pt"))
    val mapper = new ObjectMapper()
    val spec = mapper.readTree(fixtures.resolve("resnet20.json").toFile)
    val pre = spec.get("preprocess").asInstanceOf[com.fasterxml.jackson.databind.node.ObjectNode]
    pre.put("resize", 32)
    pre.set[JsonNode]("center_crop", mapper.readTree("[32, 32]"))
    mapper.writeValue(dir.resolve("model.json").toFile, spec)

    val s = new ImageScorer()
      .setModelPath(dir.resolve("model.pt").toString)
      .setInputCol("content")
      .setBatchSize(8)
    val df = spark.read.format("binaryFile").load(imgs.toString).coalesce(1)
    assertEquals(16L, s.transform(df).filter(col("prediction").isNotNull).count())
    val m = s.metrics.values
    assertEquals(m.toString, 0L, m("rowsWithErrors"))
    assertTrue(m.toString, m("decodeTimeMs") > 0L && m("resizeTimeMs") > 0L)
    // One thread per task decodes rows one after another: both are parts of preprocessing.
    assertTrue(m.toString, m("decodeTimeMs") + m("resizeTimeMs") <= m("preprocessTimeMs"))
    assertEquals(m.keySet, s.metrics.javaValues.keySet.asScala.toSet)
  }

  @Test def worksWithMulticlassEvaluator(): Unit = {
    val df = scorer("content")
      .transform(binary("digit_*.png"))
      .withColumn("label", col("prediction"))
    val acc = new MulticlassClassificationEvaluator().setMetricName("accuracy").evaluate(df)
    assertEquals(1.0, acc, 0.0)
  }

  private def withBadFiles(): String = {
    val dir = TestDirs.dir("torchspark-bad")
    val good = Files
      .list(fixtures.resolve("images"))
      .iterator()
      .asScala
      .filter(_.toString.endsWith(".png"))
      .take(5)
      .toSeq
    good.foreach(p => Files.copy(p, dir.resolve(p.getFileName)))
    val png = Files.readAllBytes(good.head)
    Files.write(dir.resolve("zz_truncated.png"), png.take(png.length / 2))
    Files.write(dir.resolve("zz_garbage.png"), "not an image".getBytes)
    dir.toString
  }

  @Test def handleInvalidErrorNamesTheRow(): Unit = {
    val df = spark.read.format("binaryFile").load(withBadFiles()).coalesce(1)
    val e = assertThrows(classOf[Exception], () => scorer("content").transform(df).collect())
    val msg = Iterator
      .iterate[Throwable](e)(_.getCause)
      .takeWhile(_ != null)
      .map(_.getMessage)
      .mkString(" | ")
    assertTrue(msg, msg.contains("row ") && msg.contains("zz_"))
  }

  @Test def handleInvalidSkipDropsAndCounts(): Unit = {
    val df = spark.read.format("binaryFile").load(withBadFiles())
    val s = scorer("content").setHandleInvalid("skip")
    assertEquals(5L, s.transform(df).count())
    assertEquals(2L, s.metrics.rowsSkipped.value.longValue)
  }

  @Test def handleInvalidKeepKeepsEveryRowOnce(): Unit = {
    val df = spark.read.format("binaryFile").load(withBadFiles())
    val out = scorer("content").setHandleInvalid("keep").transform(df).cache()
    assertEquals(7L, out.count())
    assertEquals(7L, out.select("path").distinct().count())
    val bad = out.filter(col("error").isNotNull).select("path", "error", "prediction").collect()
    assertEquals(2, bad.length)
    bad.foreach(r => assertTrue(r.getString(1), r.getString(1).startsWith("row ") && r.isNullAt(2)))
    assertEquals(5L, out.filter(col("error").isNull && col("prediction").isNotNull).count())
  }

  @Test def missingModelNamesThePath(): Unit = {
    val s = new ImageScorer().setModelPath("/no/such/model.pt").setInputCol("content")
    val e = assertThrows(classOf[Exception], () => s.transform(binary("*.png")).count())
    val msg = Iterator
      .iterate[Throwable](e)(_.getCause)
      .takeWhile(_ != null)
      .map(_.getMessage)
      .mkString(" | ")
    assertTrue(msg, msg.contains("/no/such/model.pt"))
  }

  @Test def sqlUdfScoresAndFeaturizes(): Unit = {
    TorchSpark.register(spark, "classify_image", model)
    binary("digit_0*.png").createOrReplaceTempView("images")
    val rows = spark
      .sql(
        "SELECT path, classify_image(content) AS s, classify_image_features(content) AS f FROM images"
      )
      .collect()
    assertEquals(10, rows.length)
    rows.foreach { r =>
      val e = doubles(expected(name(r.getString(0))).get("resnet20").get("probability"))
      val s = r.getStruct(1)
      assertTrue(
        maxDiff(s.getSeq[Float](s.fieldIndex("probability")).map(_.toDouble).toArray, e) <= 1e-5
      )
      assertEquals(e.indexOf(e.max).toDouble, s.getAs[Double]("prediction"), 0.0)
      assertEquals(64, r.getSeq[Double](2).length)
    }
  }

  @Test def jarOfThisLinePassesTheLineCheckAndOthersAreNamed(): Unit = {
    SparkLineCheck.check() // the Spark this suite runs on is the one this build is for
    val other = if (SparkLine.SPARK == "4.1") ("3.5.9", "2.12.18") else ("4.1.0", "2.13.17")
    val wrong = SparkLineCheck.mismatch(other._1, other._2)
    assertTrue(wrong, wrong.contains(s"built for Spark ${SparkLine.SPARK}"))
    assertTrue(wrong, wrong.contains(s"this is Spark ${other._1}"))
    // The coordinates that fix it, at this build's version.
    val fix =
      if (SparkLine.SPARK == "4.1") "torchspark-spark3.5_2.12" else "torchspark-spark4.1_2.13"
    assertTrue(wrong, wrong.contains(s"Maven coordinates dev.torchspark:$fix:${SparkLine.VERSION}"))
    assertFalse(SparkLine.VERSION, SparkLine.VERSION.contains("$"))
    assertEquals(null, SparkLineCheck.problem())
    val unknown = SparkLineCheck.mismatch("3.4.1", "2.12.17")
    assertTrue(unknown, unknown.contains("Spark 3.5 (Scala 2.12) and Spark 4.1 (Scala 2.13)"))
  }

  @Test def nativePanicBecomesAnException(): Unit = {
    val e = assertThrows(classOf[TorchSparkException], () => NativeBridge.panicForTest())
    assertTrue(e.getMessage, e.getMessage.contains("injected panic"))
    // The JVM is still here and native code still works.
    assertTrue(NativeBridge.loadCount() >= 0)
  }

  @Test def badSpecIsATypedException(): Unit = {
    val dir = TestDirs.dir("torchspark-spec")
    Files.copy(fixtures.resolve("resnet20.pt"), dir.resolve("m.pt"))
    Files.write(
      dir.resolve("m.json"),
      """{"input": {"height": 32, "width": 32}, "oops": 1}""".getBytes
    )
    val e = assertThrows(
      classOf[ModelSpecException],
      () =>
        NativeBridge.openModel(
          NativeRunner.configJson(dir.resolve("m.pt").toString, "cpu", 1, "fp32")
        )
    )
    assertTrue(e.getMessage, e.getMessage.contains("oops") && e.getMessage.contains("m.json"))
  }
}
