package dev.torchspark

import java.io.ByteArrayInputStream
import java.nio.file.Files

import scala.jdk.CollectionConverters._

import com.fasterxml.jackson.databind.JsonNode
import org.apache.spark.ml.evaluation.RegressionEvaluator
import org.apache.spark.ml.feature.VectorAssembler
import org.apache.spark.ml.linalg.Vector
import org.apache.spark.sql.{DataFrame, Row}
import org.apache.spark.sql.functions._
import org.apache.spark.sql.types._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** TorchModel on the general fixtures (tests/fixtures/make_general_fixtures.py): the shared
  * local[2] session ([[SparkSuite]]), the real .so, PyTorch's numbers.
  */
object TorchModelSuite {
  @BeforeClass def setUp(): Unit = SparkTest.generalFixtures()

  def json(name: String): JsonNode = SparkTest.json(SparkTest.generalDir.resolve(name))
  def model(name: String): String = SparkTest.generalModel(name)
}

class TorchModelSuite extends SparkSuite {
  import SparkTest.{json => _, _}
  import TorchModelSuite._

  private def mlp = new TorchModel().setModelPath(model("diabetes_mlp.pt")).setBatchSize(64)

  private def checkPredictions(df: DataFrame): Unit = {
    val rows = df.select("id", "prediction").collect()
    assertEquals(442, rows.length)
    val worst = rows.map(r => math.abs(r.getDouble(1) - pred(r.getInt(0)))).max
    assertTrue(s"max diff $worst", worst <= 1e-5)
    val rmse = new RegressionEvaluator().setLabelCol("y").setMetricName("rmse").evaluate(df)
    assertEquals(diabetes.get("rmse").asDouble, rmse, 1e-4)
  }

  @Test def regressionFromVectorAssemblerArraySparseVectorAndScalarColumnsMatchesPyTorch(): Unit = {
    val assembled = new VectorAssembler()
      .setInputCols(featureNames.toArray)
      .setOutputCol("features")
      .transform(diabetesDf)
    val scored = mlp.transform(assembled)
    assertEquals(DoubleType, scored.schema("prediction").dataType)
    checkPredictions(scored)
    checkPredictions(mlp.setInputCols(Array("features=x")).transform(diabetesDf))
    checkPredictions(mlp.setInputCols(Array("features=sv")).transform(diabetesDf))
    // Ten numeric columns gathered into the one [10] input.
    checkPredictions(
      mlp.setInputCols(Array(s"features=${featureNames.mkString(",")}")).transform(diabetesDf)
    )
  }

  private def binary(dir: String): DataFrame =
    spark.read.format("binaryFile").load(generalDir.resolve(dir).toString)

  private def name(path: String) = path.substring(path.lastIndexOf('/') + 1)

  @Test def segmentationClassMapIsExactAndItsPngDecodesToIt(): Unit = {
    val expected = json("seg_expected.json")
    val files = expected.get("files").elements().asScala.map(_.asText).toSeq
    val seg = new TorchModel()
      .setModelPath(model("seg.pt"))
      .setInputCols(Array("image=content"))
      .setOutputCols(Array("mask=mask_png"))
      .setBatchSize(4)
    val out = seg.transform(binary("seg"))
    assertEquals(ArrayType(ArrayType(IntegerType)), out.schema("classes").dataType)
    assertEquals(BinaryType, out.schema("mask_png").dataType)
    val rows = out.select("path", "classes", "mask_png").collect()
    assertEquals(files.size, rows.length)
    var compared = 0
    rows.foreach { r =>
      val i = files.indexOf(name(r.getString(0)))
      val want = expected.get("classes").get(i)
      val skip = expected
        .get("ambiguous")
        .get(i)
        .elements()
        .asScala
        .map(p => (p.get(0).asInt, p.get(1).asInt))
        .toSet
      val got = r.getSeq[Seq[Int]](1)
      val png = javax.imageio.ImageIO.read(new ByteArrayInputStream(r.getAs[Array[Byte]](2)))
      assertEquals((64, 64), (png.getHeight, png.getWidth))
      for (y <- 0 until 64; x <- 0 until 64 if !skip((y, x))) {
        val c = want.get(y).get(x).asInt
        assertEquals(s"${r.getString(0)} ($y, $x)", c, got(y)(x))
        assertEquals(s"png ${r.getString(0)} ($y, $x)", c, png.getRaster.getSample(x, y, 0))
        compared += 1
      }
    }
    assertTrue(compared > 6 * 64 * 64 - 10)
  }

  @Test def detectionsOfThreeImageSizesInOnePartitionAreStructs(): Unit = {
    val expected = json("det_expected.json")
    val files = expected.get("files").elements().asScala.map(_.asText).toSeq
    val sizes = expected.get("sizes").elements().asScala.map(doubles).toSeq
    val det = new TorchModel()
      .setModelPath(model("det.pt"))
      .setInputCols(Array("images=content"))
      .setBatchSize(8)
    val df = binary("det").coalesce(1)
    val out = det.transform(df)
    val t = out.schema("detections").dataType.asInstanceOf[ArrayType].elementType
    assertEquals(Seq("box", "label", "score"), t.asInstanceOf[StructType].fieldNames.toSeq)
    val rows = out.select("path", "detections").collect()
    assertEquals(files.size, rows.length)
    assertTrue(rows.map(r => name(r.getString(0)).split("_")(2)).toSet.size == 3)
    rows.foreach { r =>
      val file = name(r.getString(0))
      val i = files.indexOf(file)
      val want = expected.get("detections").get(i).elements().asScala.toSeq
      // Boxes in units of the image's size: pixel boxes round differently per batch size.
      val scale = Seq(sizes(i)(1), sizes(i)(0), sizes(i)(1), sizes(i)(0))
      val got = r.getSeq[Row](1)
      assertEquals(file, want.size, got.size)
      want.zip(got).foreach { case (w, g) =>
        assertEquals(file, w.get("label").asLong, g.getAs[Long]("label"))
        val box = g.getAs[scala.collection.Seq[Float]]("box").map(_.toDouble)
        val wbox = doubles(w.get("box"))
        assertEquals(4, box.size)
        box.zip(wbox).zip(scale).foreach { case ((a, b), s) =>
          assertEquals(s"$file box", b / s, a / s, 1e-5)
        }
        val score = g.get(g.fieldIndex("score")).asInstanceOf[Number].doubleValue
        assertEquals(file, w.get("score").asDouble, score, 1e-5)
      }
    }
  }

  /** The two_io images with their meta vectors: path, content, image (Spark's struct), meta. */
  private def twoIoDf(): DataFrame = {
    val expected = json("two_io_expected.json")
    val files = expected.get("files").elements().asScala.map(_.asText).toSeq
    val meta = files.zip(expected.get("meta").elements().asScala.map(doubles).toSeq).toMap
    val metaDf = spark.createDataFrame(
      spark.sparkContext.parallelize(meta.toSeq.map { case (f, m) => Row(f, m.toSeq) }),
      StructType.fromDDL("file string, meta array<double>")
    )
    val images = spark.read
      .format("image")
      .load(generalDir.resolve("two_io").toString)
      .withColumn("file", regexp_extract(col("image.origin"), "([^/]+)$", 1))
    binary("two_io")
      .withColumn("file", regexp_extract(col("path"), "([^/]+)$", 1))
      .join(metaDf, "file")
      .join(images, "file")
  }

  @Test def twoInputsGiveTwoOutputColumnsFromOneForward(): Unit = {
    val expected = json("two_io_expected.json")
    val files = expected.get("files").elements().asScala.map(_.asText).toSeq
    val df = twoIoDf().cache()
    // TorchScript from encoded bytes; the AOTInductor package from Spark's image struct (BGR).
    for (
      (file, inputs, suffix) <- Seq(
        ("two_io.pt", Array("image=content"), ""),
        ("two_io_aoti.pt2", Array.empty[String], "_aoti")
      )
    ) {
      val out = new TorchModel()
        .setModelPath(model(file))
        .setInputCols(inputs)
        .setBatchSize(3)
        .transform(df)
      assertEquals(ArrayType(FloatType), out.schema("embedding").dataType)
      val rows = out.select("file", "probability", "embedding").collect()
      assertEquals(files.size, rows.length)
      rows.foreach { r =>
        val i = files.indexOf(r.getString(0))
        val p = r.getAs[Vector](1).toArray
        val e = r.getSeq[Float](2).map(_.toDouble).toArray
        val wp = doubles(expected.get(s"probability$suffix").get(i))
        val we = doubles(expected.get(s"embedding$suffix").get(i))
        assertEquals(wp.length, p.length)
        assertEquals(we.length, e.length)
        p.zip(wp).foreach { case (a, b) => assertEquals(s"$file ${r.getString(0)}", b, a, 1e-5) }
        e.zip(we).foreach { case (a, b) => assertEquals(s"$file embedding", b, a, 1e-5) }
      }
    }
  }

  /** The limits of docs/limits.md as params: a lower maxRowElements makes every row an error naming
    * it (arrays and sparse vectors alike), a small maxBatchBytes gives passes of 3 rows and the
    * same predictions, and the three round-trip through save/load.
    */
  @Test def limitParamsLowerTheLimitsAndRoundTrip(): Unit = {
    // A copy of the model: its passes of 3 rows leave the shared model's TorchScript executor
    // (which other tests compare bit for bit across runs) as it was.
    val dir = TestDirs.dir("torchspark-limits")
    Seq("pt", "json").foreach { ext =>
      Files.copy(generalDir.resolve(s"diabetes_mlp.$ext"), dir.resolve(s"mlp.$ext"))
    }
    def mlp = new TorchModel().setModelPath(dir.resolve("mlp.pt").toString).setBatchSize(64)
    Seq("features=x", "features=sv").foreach { cols =>
      val low = mlp.setInputCols(Array(cols)).setHandleInvalid("keep").setMaxRowElements(5)
      val rows = low.transform(diabetesDf.where("id < 8")).select("prediction", "error").collect()
      assertEquals(8, rows.length)
      rows.foreach { r =>
        assertTrue(r.isNullAt(0))
        val e = r.getString(1)
        assertTrue(e, e.contains("over the limit of 5 values per row (max_row_elements)"))
      }
    }
    checkPredictions(
      mlp.setInputCols(Array("features=x")).setMaxBatchBytes(3 * 10 * 4).transform(diabetesDf)
    )
    mlp
      .setMaxRowElements(7)
      .setMaxBatchBytes(1L << 20)
      .setMaxTextBytes(99)
      .write
      .overwrite()
      .save(dir.resolve("m").toString)
    val loaded = TorchModel.load(dir.resolve("m").toString)
    assertEquals(
      (7L, 1L << 20, 99L),
      (loaded.getMaxRowElements, loaded.getMaxBatchBytes, loaded.getMaxTextBytes)
    )
  }

  @Test def sqlFunctionReturnsTheOutputsAsAStruct(): Unit = {
    TorchSpark.register(spark, "diabetes_mlp", model("diabetes_mlp.pt"))
    diabetesDf.where("id < 24").createOrReplaceTempView("patients")
    val rows = spark.sql("SELECT id, diabetes_mlp(x) AS s FROM patients").collect()
    assertEquals(24, rows.length)
    val t = spark.sql("SELECT diabetes_mlp(x) AS s FROM patients").schema("s").dataType
    assertEquals(StructType.fromDDL("prediction double, error string"), t)
    rows.foreach { r =>
      val s = r.getStruct(1)
      assertTrue(s.isNullAt(1))
      assertEquals(pred(r.getInt(0)), s.getDouble(0), 1e-5)
    }
    // Two arguments, two outputs; a short row is the error field.
    TorchSpark.register(spark, "two_io", model("two_io.pt"))
    twoIoDf().createOrReplaceTempView("two_io_rows")
    val two = spark
      .sql(
        "SELECT two_io(content, meta).probability AS p, two_io(content, slice(meta, 1, 3)) AS bad " +
          "FROM two_io_rows"
      )
      .collect()
    assertEquals(8, two.length)
    two.foreach { r =>
      assertEquals(5, r.getAs[Vector](0).size)
      val err = r.getStruct(1).getString(2)
      assertTrue(err, err != null && err.contains("meta") && r.getStruct(1).isNullAt(0))
    }
  }

  /** diabetesDf's x, row 5 one value short. */
  private def withShortRow(): DataFrame =
    diabetesDf
      .where("id < 12")
      .withColumn("x", when(col("id") === 5, slice(col("x"), 1, 9)).otherwise(col("x")))
      .coalesce(1) // diabetesDf's first partition, in order: row 5 is id 5

  @Test def wrongLengthRowIsAnErrorRowNamingRowInputColumnAndShapes(): Unit = {
    def check(msg: String): Unit = {
      Seq("row 5", "`features`", "10", "9").foreach { s =>
        assertTrue(s"`$s` in: $msg", msg.contains(s))
      }
      assertTrue(msg, msg.contains("column x") || msg.contains("column `x`"))
    }
    val m = mlp.setInputCols(Array("features=x"))
    val e = assertThrows(classOf[Exception], () => m.transform(withShortRow()).collect())
    check(messages(e))

    val skip = mlp.setInputCols(Array("features=x")).setHandleInvalid("skip")
    assertEquals(11L, skip.transform(withShortRow()).count())
    assertEquals(1L, skip.metrics.rowsSkipped.value.longValue)

    val kept = mlp
      .setInputCols(Array("features=x"))
      .setHandleInvalid("keep")
      .transform(withShortRow())
      .select("id", "prediction", "error")
      .collect()
    assertEquals(12, kept.length)
    kept.foreach { r =>
      if (r.getInt(0) == 5) { assertTrue(r.isNullAt(1)); check(r.getString(2)) }
      else {
        assertTrue(r.isNullAt(2))
        assertEquals(pred(r.getInt(0)), r.getDouble(1), 1e-5)
      }
    }
  }

  @Test def driverSpecCheckDescribesGeneralSpecs(): Unit = {
    // A driver outside local mode checks a spec with the native describe (no model loaded).
    Seq("diabetes_mlp.json", "seg.json", "det.json", "two_io.json").foreach { f =>
      DriverCheck.checkSpec(f, new String(Files.readAllBytes(generalDir.resolve(f)), "UTF-8"))
    }
    val e = assertThrows(
      classOf[ModelSpecException],
      () =>
        DriverCheck.checkSpec(
          "m.json",
          """{"spec_version": 2, "inputs": [], "outputs": [], "oops": 1}"""
        )
    )
    assertTrue(e.getMessage, e.getMessage.contains("oops") && e.getMessage.contains("m.json"))
  }

  @Test def imagePresetsOnAGeneralSpecFailInTransformSchemaNamingTorchModel(): Unit = {
    // ImageScorer / ImageFeaturizer are the score / featurize presets of a version-1 spec: the
    // native describe refuses them for a version-2 spec, naming the file and what to run.
    val df = SparkTest.binaryImages("digit_0*.png")
    val path = model("diabetes_mlp.pt")
    for (
      t <- Seq(
        new ImageScorer().setModelPath(path).setInputCol("content"),
        new ImageFeaturizer().setModelPath(path).setInputCol("content")
      )
    ) {
      val e = assertThrows(classOf[ModelSpecException], () => t.transformSchema(df.schema))
      assertTrue(e.getMessage, e.getMessage.contains(model("diabetes_mlp.json")))
      assertTrue(e.getMessage, e.getMessage.contains("run it with TorchModel"))
    }
  }

  @Test def missingInputColumnFailsInTransformSchemaNamingIt(): Unit = {
    val df = diabetesDf.select("id", "y")
    val e = assertThrows(classOf[IllegalArgumentException], () => mlp.transformSchema(df.schema))
    assertTrue(e.getMessage, e.getMessage.contains("`features`") && e.getMessage.contains("id, y"))
    val e2 = assertThrows(
      classOf[IllegalArgumentException],
      () => mlp.setInputCols(Array("feats=x")).transformSchema(diabetesDf.schema)
    )
    assertTrue(
      e2.getMessage,
      e2.getMessage.contains("`feats`") && e2.getMessage.contains("features")
    )
    val e3 = assertThrows(
      classOf[IllegalArgumentException],
      () => mlp.setInputCols(Array("features=id,x")).transformSchema(diabetesDf.schema)
    )
    assertTrue(
      e3.getMessage,
      e3.getMessage.contains("`x`") && e3.getMessage.contains("array<double>")
    )
  }
}
