package dev.torchspark

import java.nio.file.Path

import scala.jdk.CollectionConverters._

import com.fasterxml.jackson.databind.ObjectMapper
import org.apache.spark.ml.linalg.Vector
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.functions._
import org.apache.spark.sql.types._
import org.apache.spark.sql.torchspark.Compat
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

import dev.torchspark.sql.{ExtractTorchCalls, TorchCall, TorchEvalExec, TorchEvalStrategy}

/** SQL functions through the Catalyst rule and the batched TorchEval node, against the transformers
  * on the same rows: a real local[2] session, the real .so, the real fixtures.
  */
object TorchSqlSuite {
  val out: Path = SparkTest.fixtures

  @BeforeClass def setUp(): Unit = {
    SparkTest.imageFixtures()
    SparkTest.generalFixtures()
    SparkTest.textFixtures()
    TorchSpark.register(SparkTest.session, "classify_image", out.resolve("resnet20.pt").toString)
  }

  def images(glob: String): DataFrame = SparkTest.binaryImages(glob)

  /** The TorchEvalExec nodes of a query's physical plan (before adaptive execution wraps it). */
  def torchEvals(df: DataFrame): Seq[TorchEvalExec] =
    df.queryExecution.sparkPlan.collect { case e: TorchEvalExec => e }

  def maxDiff(a: Array[Double], b: Array[Double]): Double = SparkTest.maxDiff(a, b)

  /** A float array field of a result struct, as doubles. */
  def floats(r: Row, field: String): Array[Double] =
    r.getSeq[Float](r.fieldIndex(field)).map(_.toDouble).toArray
}

class TorchSqlSuite extends SparkSuite {
  import TorchSqlSuite._

  @Test def sqlScoreEqualsImageScorerRowForRow(): Unit = {
    // Every fixture image (PNG, JPEG, GIF, BMP, gray, RGBA, noise) in two partitions.
    val df = images("*").repartition(2)
    df.createOrReplaceTempView("all_images")
    val sqlRows = spark
      .sql(
        "SELECT path, classify_image(content) AS s, classify_image_features(content) AS f " +
          "FROM all_images"
      )
      .collect()
      .map(r => r.getString(0) -> r)
      .toMap
    val scorer = new ImageScorer()
      .setModelPath(out.resolve("resnet20.pt").toString)
      .setInputCol("content")
      .setHandleInvalid("keep")
    val scored = scorer
      .transform(df)
      .select("path", "prediction", "probability", "predicted_label", "error", "top_k")
    val featurized = new ImageFeaturizer()
      .setModelPath(out.resolve("resnet20.pt").toString)
      .setInputCol("content")
      .setHandleInvalid("keep")
      .transform(df)
      .select("path", "features")
      .collect()
      .map(r => r.getString(0) -> r)
      .toMap
    val rows = scored.collect()
    assertEquals(40, rows.length)
    assertEquals(40, sqlRows.size)
    rows.foreach { r =>
      val s = sqlRows(r.getString(0)).getStruct(1)
      assertEquals(r.getString(4), s.getAs[String]("error"))
      if (r.isNullAt(4)) {
        assertEquals(r.getString(0), r.getDouble(1), s.getAs[Double]("prediction"), 0.0)
        assertEquals(r.getString(3), s.getAs[String]("predicted_label"))
        assertEquals(r.getString(3), s.getAs[String]("label"))
        // SQL's probability is the native float32: the transformer's Vector holds the same values.
        val p = s.getSeq[Float](s.fieldIndex("probability")).map(_.toDouble).toArray
        assertTrue(r.getString(0), maxDiff(p, r.getAs[Vector](2).toArray) <= 0.0)
        assertEquals(r.getString(0), r.getSeq[Row](5), s.getSeq[Row](s.fieldIndex("top_k")))
        val f = sqlRows(r.getString(0)).getSeq[Double](2).toArray
        assertTrue(maxDiff(f, featurized(r.getString(0)).getAs[Vector](1).toArray) <= 1e-6)
      } else assertTrue(sqlRows(r.getString(0)).isNullAt(2))
    }
    // The two functions ran in one node over the rows, a batch at a time.
    val plan = spark.sql(
      "SELECT classify_image(content) AS s, classify_image_features(content) AS f FROM all_images"
    )
    assertEquals(1, torchEvals(plan).size)
    assertEquals(2, torchEvals(plan).head.calls.size)
  }

  @Test def imageScoreStructHasTheDecidedNamesAndTypes(): Unit = {
    // The score preset as SQL shows it (plan of issue 26), `label` kept as an alias field.
    val topK = ArrayType(
      StructType(
        Seq(
          StructField("index", IntegerType, nullable = false),
          StructField("label", StringType),
          StructField("probability", DoubleType, nullable = false)
        )
      )
    )
    val want = StructType(
      Seq(
        StructField("prediction", DoubleType),
        StructField("probability", ArrayType(FloatType, containsNull = false)),
        StructField("predicted_label", StringType),
        StructField("top_k", topK),
        StructField("label", StringType),
        StructField("error", StringType)
      )
    )
    assertEquals(want, TorchSpark.scoreType)
    images("digit_0*.png").createOrReplaceTempView("digits_types")
    val df = spark.sql(
      "SELECT classify_image(content) AS s, classify_image_features(content) AS f " +
        "FROM digits_types"
    )
    assertEquals(want, df.schema("s").dataType)
    assertEquals(ArrayType(DoubleType, containsNull = false), df.schema("f").dataType)
    val rows = df.collect()
    assertEquals(10, rows.length)
    rows.foreach { r =>
      val s = r.getStruct(0)
      val p = floats(s, "probability")
      assertEquals(p.indexOf(p.max).toDouble, s.getAs[Double]("prediction"), 0.0)
      assertEquals(s.getAs[String]("predicted_label"), s.getAs[String]("label"))
      val top = s.getSeq[Row](s.fieldIndex("top_k"))
      assertEquals(5, top.size)
      assertEquals(p.indexOf(p.max), top.head.getInt(0))
      top.foreach(t => assertEquals(p(t.getInt(0)), t.getDouble(2), 0.0))
    }
  }

  @Test def sqlGeneralEqualsTorchModel(): Unit = {
    val general = out.resolve("general")
    val diabetes = new ObjectMapper().readTree(general.resolve("diabetes.json").toFile)
    val xs = diabetes
      .get("X")
      .elements()
      .asScala
      .take(100)
      .map { x =>
        x.elements().asScala.map(_.asDouble).toVector
      }
      .toVector
    val schema = StructType(
      Seq(StructField("id", IntegerType), StructField("x", ArrayType(DoubleType)))
    )
    val df = spark.createDataFrame(
      spark.sparkContext.parallelize(xs.zipWithIndex.map { case (x, i) => Row(i, x) }, 2),
      schema
    )
    df.createOrReplaceTempView("patients")
    TorchSpark.register(spark, "diabetes_mlp", general.resolve("diabetes_mlp.pt").toString)
    val sqlOut = spark.sql("SELECT id, diabetes_mlp(x) AS s FROM patients")
    assertEquals(1, torchEvals(sqlOut).size)
    assertEquals(StructType.fromDDL("prediction double, error string"), sqlOut.schema("s").dataType)
    val got = sqlOut.collect().map(r => r.getInt(0) -> r.getStruct(1)).toMap
    val want = new TorchModel()
      .setModelPath(general.resolve("diabetes_mlp.pt").toString)
      .setInputCols(Array("features=x"))
      .transform(df)
      .select("id", "prediction")
      .collect()
    assertEquals(100, want.length)
    want.foreach { r =>
      val s = got(r.getInt(0))
      assertTrue(s.getString(1), s.isNullAt(1))
      assertEquals(r.getDouble(1), s.getDouble(0), 1e-9)
    }
    // A short row is that row's error, naming the input and the shapes; the other rows score.
    val bad = spark
      .sql(
        "SELECT id, diabetes_mlp(CASE WHEN id = 5 THEN slice(x, 1, 9) ELSE x END) AS s FROM patients"
      )
      .collect()
    bad.foreach { r =>
      val err = r.getStruct(1).getString(1)
      if (r.getInt(0) == 5)
        assertTrue(err, err != null && err.contains("`features`") && err.contains("9"))
      else assertNull(err)
    }
    // The argument count is checked against the spec when the query is analyzed.
    val e =
      assertThrows(classOf[Exception], () => spark.sql("SELECT diabetes_mlp(x, x) FROM patients"))
    assertTrue(e.getMessage, e.getMessage.contains("takes 1 argument"))
  }

  @Test def sqlEmbedTextEqualsTextEmbedder(): Unit = {
    val text = out.resolve("text")
    val texts = new ObjectMapper()
      .readTree(text.resolve("text_expected.json").toFile)
      .get("texts")
      .elements()
      .asScala
      .map(_.asText)
      .take(6)
      .toVector
    val df = spark.createDataFrame(
      spark.sparkContext.parallelize(texts.zipWithIndex.map { case (t, i) => Row(i, t) }, 1),
      StructType(Seq(StructField("id", IntegerType), StructField("text", StringType)))
    )
    df.createOrReplaceTempView("docs")
    TorchSpark.register(spark, "embed_text", text.resolve("minilm.pt").toString)
    val got = spark
      .sql("SELECT id, embed_text(text).embedding AS e, embed_text(text).error AS err FROM docs")
      .collect()
      .map(r => r.getInt(0) -> r)
      .toMap
    val want = new TextEmbedder()
      .setModelPath(text.resolve("minilm.pt").toString)
      .transform(df)
      .select("id", "embedding")
      .collect()
    assertEquals(6, want.length)
    want.foreach { r =>
      val g = got(r.getInt(0))
      assertTrue(g.getString(2), g.isNullAt(2))
      assertTrue(maxDiff(g.getAs[Vector](1).toArray, r.getAs[Vector](1).toArray) <= 1e-5)
    }
  }

  @Test def explainShowsOneTorchEvalForTwoFields(): Unit = {
    images("digit_0*.png").createOrReplaceTempView("digits")
    val df = spark.sql(
      "SELECT classify_image(content).label AS l, classify_image(content).probability AS p " +
        "FROM digits"
    )
    val explain = df.queryExecution.sparkPlan.toString
    assertEquals(explain, 1, "TorchEval \\[".r.findAllMatchIn(explain).size)
    assertTrue(explain, explain.contains("engine=shared, batch=auto"))
    val evals = torchEvals(df)
    assertEquals(1, evals.size)
    assertEquals(1, evals.head.calls.size)
    val rows = df.collect()
    assertEquals(10, rows.length)
    rows.foreach(r => assertEquals(10, r.getSeq[Double](1).size))
    // One pass: each row once through the node (no exchange here, so no adaptive wrapper).
    val ran = df.queryExecution.executedPlan.collect { case e: TorchEvalExec => e }.head
    assertEquals(10L, ran.metrics("numOutputRows").value)
  }

  @Test def filterOnAScoreWorks(): Unit = {
    images("digit_*.png").createOrReplaceTempView("digits24")
    // PyTorch's classes of the 24 digit PNGs (expected.json); the query keeps the commonest one.
    val classes = new ObjectMapper()
      .readTree(out.resolve("expected.json").toFile)
      .get("images")
      .elements()
      .asScala
      .map(n => n.get("file").asText -> n)
      .filter { case (f, _) => f.startsWith("digit_") && f.endsWith(".png") }
      .map { case (f, n) =>
        val p = n.get("resnet20").get("probability").elements().asScala.map(_.asDouble).toArray
        f -> p.indexOf(p.max)
      }
      .toMap
    assertEquals(24, classes.size)
    val top = classes.values.groupBy(identity).maxBy(_._2.size)._1
    val expected = classes.filter(_._2 == top).keySet
    assertTrue(expected.size < 24)
    val df = spark.sql(
      "SELECT path, classify_image(content).label AS label FROM digits24 " +
        s"WHERE classify_image(content).prediction = $top"
    )
    // The WHERE and the SELECT share one call: one node, one pass.
    assertEquals(1, torchEvals(df).size)
    val rows = df.collect()
    assertEquals(
      expected,
      rows.map(r => r.getString(0).substring(r.getString(0).lastIndexOf('/') + 1)).toSet
    )
    assertTrue(rows.forall(_.getString(1) != null))
  }

  @Test def callOverAnAggregateRunsRowByRowWithTheSameResult(): Unit = {
    images("digit_1*.png").createOrReplaceTempView("digits10")
    // The rule cannot move a call over an aggregate below it: TorchCall.eval scores the row.
    val rowByRow = spark.sql("SELECT classify_image(max(content)) AS s FROM digits10")
    assertEquals(0, torchEvals(rowByRow).size)
    // (A Project over the Aggregate would collapse into it: pick the row with a filter instead.)
    val batched = spark.sql(
      "SELECT classify_image(content) AS s FROM digits10 " +
        "WHERE content = (SELECT max(content) FROM digits10)"
    )
    assertEquals(1, torchEvals(batched).size)
    val (a, b) = (rowByRow.collect().head.getStruct(0), batched.collect().head.getStruct(0))
    assertNull(a.getAs[String]("error"))
    assertEquals(b.getAs[Double]("prediction"), a.getAs[Double]("prediction"), 0.0)
    assertEquals(b.getAs[String]("predicted_label"), a.getAs[String]("predicted_label"))
    assertTrue(maxDiff(floats(a, "probability"), floats(b, "probability")) <= 1e-6)
    // A wrong argument type fails when the query is analyzed, naming the function.
    val e = assertThrows(classOf[Exception], () => spark.sql("SELECT classify_image(1.5)"))
    assertTrue(e.getMessage, e.getMessage.contains("classify_image"))
  }

  @Test def extensionsConfRegistersTheRule(): Unit = {
    // spark.sql.extensions is read once per SparkContext: a second context costs seconds, so a
    // second session over this one takes the extension through the builder, as the conf does.
    val ext = Class.forName("dev.torchspark.TorchSparkExtensions").getConstructor().newInstance()
    SparkSession.clearActiveSession()
    SparkSession.clearDefaultSession()
    val other =
      try
        SparkSession
          .builder()
          .withExtensions(ext.asInstanceOf[org.apache.spark.sql.SparkSessionExtensions => Unit])
          .getOrCreate()
      finally {
        SparkSession.setDefaultSession(spark)
        SparkSession.setActiveSession(spark)
      }
    assertNotSame(spark, other)
    // The function alone, without TorchSpark.register's install: the plan comes from the extension.
    val fn = new dev.torchspark.sql.TorchFunction(
      "ext_classify",
      ModelSource(other, out.resolve("resnet20.pt").toString),
      "cpu",
      1,
      dev.torchspark.sql.TorchFunction.ImageScore,
      0, // the engine's batch (NativeBridge.autoBatchSize)
      "per-task",
      60000L
    )
    Compat
      .functionRegistry(other)
      .createOrReplaceTempFunction(fn.name, args => TorchCall(fn, args), "scala_udf")
    val x = Compat.experimental(other)
    assertFalse(x.extraOptimizations.contains(ExtractTorchCalls))
    assertFalse(x.extraStrategies.contains(TorchEvalStrategy))
    other.read
      .format("binaryFile")
      .option("pathGlobFilter", "digit_1*.png")
      .load(out.resolve("images").toString)
      .createOrReplaceTempView("digits1")
    val df = other.sql("SELECT ext_classify(content).prediction AS p FROM digits1")
    assertEquals(1, torchEvals(df).size)
    assertTrue(df.queryExecution.executedPlan.toString.contains("engine=per-task, batch=auto"))
    assertEquals(10, df.collect().count(!_.isNullAt(0)))
    // The row fallback of a per-task function: submit + collect, the pass inline in submit.
    val rowByRow = other.sql("SELECT ext_classify(max(content)) AS s FROM digits1")
    assertEquals(0, torchEvals(rowByRow).size)
    val batched = other.sql(
      "SELECT ext_classify(content) AS s FROM digits1 WHERE content = (SELECT max(content) FROM digits1)"
    )
    val (a, b) = (rowByRow.collect().head.getStruct(0), batched.collect().head.getStruct(0))
    assertNull(a.getAs[String]("error"))
    assertEquals(b.getAs[Double]("prediction"), a.getAs[Double]("prediction"), 0.0)
    // Per task: bitwise at batch size 1.
    assertEquals(
      b.getSeq[Float](b.fieldIndex("probability")),
      a.getSeq[Float](a.fieldIndex("probability"))
    )
    // TorchSpark.register's rule beside the extension's: still one node (the rule is idempotent).
    dev.torchspark.sql.TorchSql.install(other)
    val both = other.sql("SELECT ext_classify(content).prediction AS p FROM digits1")
    assertEquals(1, torchEvals(both).size)
    assertEquals(10, both.collect().count(!_.isNullAt(0)))
  }
}
