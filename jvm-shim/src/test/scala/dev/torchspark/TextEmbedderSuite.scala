package dev.torchspark

import java.io.File
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, StandardCopyOption}

import scala.jdk.CollectionConverters._

import org.apache.hadoop.conf.Configuration
import org.apache.spark.ml.linalg.{SQLDataTypes, Vector}
import org.apache.spark.sql.DataFrame
import org.apache.spark.sql.types._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** TextEmbedder, TorchModel on text and SQL `embed_text` on the text fixtures
  * (tests/fixtures/make_text_fixtures.py: all-MiniLM-L6-v2 from its package), on a real local[2]
  * session with the real .so; the oracles are the Python `tokenizers` package (ids) and
  * sentence-transformers (embeddings), recorded in text_expected.json.
  */
object TextEmbedderSuite {
  @BeforeClass def setUp(): Unit = SparkTest.textFixtures()

  lazy val ids: Seq[Seq[Long]] =
    SparkTest.textExpected
      .get("ids")
      .elements()
      .asScala
      .map(_.elements().asScala.map(_.asLong).toSeq)
      .toSeq
  lazy val embeddings: Seq[Array[Double]] =
    SparkTest.textExpected.get("embeddings").elements().asScala.map(SparkTest.doubles).toSeq
  lazy val truncated: Int =
    SparkTest.textExpected.get("truncated").elements().asScala.count(_.asBoolean)

  def model(name: String): String = SparkTest.textModel(name)
}

class TextEmbedderSuite extends SparkSuite {
  import SparkTest._
  import TextEmbedderSuite._

  private def embedder = new TextEmbedder().setModelPath(model("minilm.pt"))

  @Test def tokenIdsThroughTorchModelEqualPythonTokenizers(): Unit = {
    // ids.pt returns its input ids, -1 where padded: strip the padding, compare exactly.
    val m = new TorchModel().setModelPath(model("ids.pt")).setBatchSize(4)
    val rows = m.transform(textsDf).select("id", "ids").collect()
    assertEquals(texts.size, rows.length)
    rows.foreach { r =>
      val got = r.getSeq[Long](1).filter(_ != -1L)
      assertEquals(s"row ${r.getInt(0)}: ${texts(r.getInt(0))}", ids(r.getInt(0)), got)
    }
    assertEquals(truncated.toLong, m.metrics.values("truncatedRows"))
  }

  @Test def embeddingsMatchSentenceTransformersAsMlVectors(): Unit = {
    // Batches of 4 in calls of 32 rows: the native sort by length reorders within each call.
    val e = embedder.setBatchSize(4)
    val out = e.transform(textsDf)
    assertEquals(SQLDataTypes.VectorType, out.schema("embedding").dataType)
    val rows = out.select("id", "text", "embedding").collect()
    assertEquals(texts.size, rows.length)
    val worst = rows.map { r =>
      assertEquals(texts(r.getInt(0)), r.getString(1))
      maxDiff(r.getAs[Vector](2).toArray, embeddings(r.getInt(0)))
    }.max
    assertTrue(s"max abs diff $worst", worst <= 1e-5)
    // Text rows count as rows scored (imagesScored, the old name, is the same counter).
    assertEquals(texts.size.toLong, e.metrics.values("rowsScored"))
    assertEquals(texts.size.toLong, e.metrics.values("imagesScored"))
    assertEquals(truncated.toLong, e.metrics.values("truncatedRows"))

    // The issue's pair, through other column names.
    val pair = textExpected.get("pair").elements().asScala.map(i => texts(i.asInt)).toSeq
    val v = embedder
      .setInputCol("sentence")
      .setOutputCol("vec")
      .transform(spark.createDataFrame(pair.map(Tuple1(_))).toDF("sentence"))
      .select("vec")
      .collect()
      .map(_.getAs[Vector](0).toArray)
    val cosine = v(0).zip(v(1)).map { case (a, b) => a * b }.sum
    assertEquals(textExpected.get("cosine_pair").asDouble, cosine, 1e-5)
    assertEquals(0.755, cosine, 1e-3)
  }

  @Test def sqlEmbedTextReturnsTheEmbeddingAndNamesANullRow(): Unit = {
    TorchSpark.register(spark, "embed_text", model("minilm.pt"))
    textsDf
      .where("id < 6")
      .selectExpr("id", "CASE WHEN id = 3 THEN NULL ELSE text END AS text")
      .createOrReplaceTempView("docs")
    val t = spark.sql("SELECT embed_text(text) AS s FROM docs").schema("s").dataType
    assertEquals(
      StructType(
        Seq(StructField("embedding", SQLDataTypes.VectorType), StructField("error", StringType))
      ),
      t
    )
    val rows = spark
      .sql("SELECT id, s.embedding, s.error FROM (SELECT id, embed_text(text) AS s FROM docs)")
      .collect()
    assertEquals(6, rows.length)
    rows.foreach { r =>
      if (r.getInt(0) == 3) {
        assertTrue(r.isNullAt(1))
        val err = r.getString(2)
        assertTrue(err, err != null && err.contains("null"))
        assertTrue(err, err.contains("input_ids"))
      } else {
        assertTrue(r.getString(2), r.isNullAt(2))
        assertTrue(maxDiff(r.getAs[Vector](1).toArray, embeddings(r.getInt(0))) <= 1e-5)
      }
    }
  }

  /** Six texts, row 2 null, in one partition (row numbers are the partition's). */
  private def withNullRow(): DataFrame =
    textsDf
      .where("id < 6")
      .selectExpr("id", "CASE WHEN id = 2 THEN NULL ELSE text END AS text")
      .coalesce(1)

  @Test def aNullOrInvalidUtf8RowFailsOrIsSkippedOrKeptNamingRowAndColumn(): Unit = {
    def check(msg: String): Unit =
      Seq("row 2", "input_ids", "text", "null").foreach { s =>
        assertTrue(s"`$s` in: $msg", msg.contains(s))
      }
    val e = assertThrows(classOf[Exception], () => embedder.transform(withNullRow()).collect())
    check(messages(e))

    val skip = embedder.setHandleInvalid("skip")
    assertEquals(5L, skip.transform(withNullRow()).count())
    assertEquals(1L, skip.metrics.rowsSkipped.value.longValue)

    val kept = embedder
      .setHandleInvalid("keep")
      .transform(withNullRow())
      .select("id", "embedding", "error")
      .collect()
    assertEquals(6, kept.length)
    kept.foreach { r =>
      if (r.getInt(0) == 2) { assertTrue(r.isNullAt(1)); check(r.getString(2)) }
      else {
        assertTrue(r.getString(2), r.isNullAt(2))
        assertTrue(maxDiff(r.getAs[Vector](1).toArray, embeddings(r.getInt(0))) <= 1e-5)
      }
    }

    // A binary column of UTF-8 bytes embeds as the string does; invalid UTF-8 is a row error.
    val bytes = Seq(texts(6).getBytes(StandardCharsets.UTF_8), Array[Byte](0x61, 0xff.toByte, 0x62))
    val bin =
      spark.createDataFrame(bytes.zipWithIndex.map { case (b, i) => (i, b) }).toDF("id", "text")
    val r = embedder
      .setHandleInvalid("keep")
      .transform(bin.coalesce(1))
      .select("embedding", "error")
      .collect()
    assertTrue(maxDiff(r(0).getAs[Vector](0).toArray, embeddings(6)) <= 1e-5)
    assertTrue(r(1).getString(1), r(1).isNullAt(0) && r(1).getString(1).contains("not UTF-8"))
    assertTrue(r(1).getString(1), r(1).getString(1).contains("row 1"))
  }

  @Test def aNonStringColumnOrANonTextSpecIsRefusedInTransformSchema(): Unit = {
    val ints = StructType(Seq(StructField("text", IntegerType)))
    val e = assertThrows(classOf[IllegalArgumentException], () => embedder.transformSchema(ints))
    Seq("input_ids", "`text`", "int", "string or binary").foreach { s =>
      assertTrue(s"`$s` in: ${e.getMessage}", e.getMessage.contains(s))
    }
    val e2 = assertThrows(
      classOf[IllegalArgumentException],
      () => new TorchModel().setModelPath(model("minilm.pt")).transformSchema(ints)
    )
    assertTrue(e2.getMessage, e2.getMessage.contains("input_ids") && e2.getMessage.contains("int"))
    val missing = assertThrows(
      classOf[IllegalArgumentException],
      () => embedder.setInputCol("body").transformSchema(textsDf.schema)
    )
    assertTrue(missing.getMessage, missing.getMessage.contains("`body`"))
    // ids.pt has a text input but an array output: not an embedder.
    val notVector = assertThrows(
      classOf[IllegalArgumentException],
      () => new TextEmbedder().setModelPath(model("ids.pt")).transformSchema(textsDf.schema)
    )
    Seq("ids", "TorchModel", "vector").foreach { s =>
      assertTrue(s"`$s` in: ${notVector.getMessage}", notVector.getMessage.contains(s))
    }
    assertEquals(
      SQLDataTypes.VectorType,
      embedder.setHandleInvalid("keep").transformSchema(textsDf.schema)("embedding").dataType
    )
  }

  @Test def aRemoteModelBringsItsTokenizerIntoTheNodeCache(): Unit = {
    val store = TestDirs.dir("torchspark-text-store")
    Seq("ids.pt", "ids.json", "minilm.tokenizer.json").foreach { f =>
      Files.copy(textDir.resolve(f), store.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    val cache = TestDirs.dir("torchspark-text-cache").toFile
    System.setProperty("torchspark.cache.dir", cache.toString)
    try {
      val uri = s"file://${store.resolve("ids.pt")}"
      val local = new File(ModelSource.fetch(uri, new Configuration()))
      val tok = new File(local.getParentFile, "minilm.tokenizer.json").toPath
      assertArrayEquals(
        Files.readAllBytes(store.resolve("minilm.tokenizer.json")),
        Files.readAllBytes(tok)
      )

      // A changed tokenizer that no longer matches the spec's pin is refused, naming it.
      Files.write(store.resolve("minilm.tokenizer.json"), "{}".getBytes(StandardCharsets.UTF_8))
      val pin =
        assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
      assertTrue(
        pin.getMessage,
        pin.getMessage.contains("minilm.tokenizer.json") && pin.getMessage.contains("sha256")
      )

      Files.delete(store.resolve("minilm.tokenizer.json"))
      val gone =
        assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
      assertTrue(
        gone.getMessage,
        gone.getMessage.contains(s"${store.resolve("minilm.tokenizer.json")}")
      )
    } finally System.clearProperty("torchspark.cache.dir")
  }
}
