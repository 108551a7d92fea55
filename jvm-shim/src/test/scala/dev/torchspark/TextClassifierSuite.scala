package dev.torchspark

import scala.jdk.CollectionConverters._

import org.apache.spark.ml.linalg.{SQLDataTypes, Vector}
import org.apache.spark.sql.Row
import org.apache.spark.sql.types._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** TextClassifier on the text-classifier fixtures (tests/fixtures/make_textcls_fixtures.py: two
  * small BERT classifiers with random weights, softmax and sigmoid), on a real local[2] session
  * with the real .so; the oracle is Hugging Face's text-classification pipeline, recorded in
  * cls/cls_expected.json.
  */
object TextClassifierSuite {
  @BeforeClass def setUp(): Unit = SparkTest.textFixtures()

  lazy val clsExpected = SparkTest.json(SparkTest.fixtures.resolve("text/cls/cls_expected.json"))
  lazy val clsTexts: Seq[String] = clsExpected.get("texts").elements().asScala.map(_.asText).toSeq

  /** The class names and, per text, the pipeline's scores in class order. */
  def oracle(name: String): (Seq[String], Seq[Array[Double]]) = {
    val e = clsExpected.get(name)
    val labels = e.get("labels").elements().asScala.map(_.asText).toSeq
    val probs =
      e.get("pipeline").elements().asScala.map(row => labels.map(row.get(_).asDouble).toArray)
    (labels, probs.toSeq)
  }

  def model(name: String): String = SparkTest.textModel(s"cls/$name.pt")
}

class TextClassifierSuite extends SparkSuite {
  import SparkTest._
  import TextClassifierSuite._

  private def df = {
    val rows = clsTexts.zipWithIndex.map { case (t, i) => Row(i, t) }
    val schema = StructType(Seq(StructField("id", IntegerType), StructField("text", StringType)))
    spark.createDataFrame(spark.sparkContext.parallelize(rows, 2), schema)
  }

  @Test def classesAndProbabilitiesMatchTheHuggingFacePipelineAtBatchSizes1And64(): Unit =
    for (name <- Seq("single", "multi"); batch <- Seq(1, 64)) {
      val (labels, probs) = oracle(name)
      val clf = new TextClassifier().setModelPath(model(name)).setBatchSize(batch).setTopK(2)
      val out = clf.transform(df)
      assertEquals(SQLDataTypes.VectorType, out.schema("probability").dataType)
      assertEquals(DoubleType, out.schema("prediction").dataType)
      assertFalse(out.columns.contains("logits"))
      val rows = out.select("id", "prediction", "probability", "predicted_label", "top_k").collect()
      assertEquals(clsTexts.size, rows.length)
      rows.foreach { r =>
        val want = probs(r.getInt(0))
        val best = want.indexOf(want.max)
        val at = s"$name, batch $batch, row ${r.getInt(0)}"
        assertEquals(at, labels(best), r.getString(3))
        assertEquals(at, best.toDouble, r.getDouble(1), 0.0)
        assertTrue(at, maxDiff(r.getAs[Vector](2).toArray, want) <= 1e-5)
        val top = r.getSeq[Row](4)
        assertEquals(at, Seq(labels(best)), top.take(1).map(_.getAs[String]("label")))
        assertEquals(at, 2, top.size)
      }
      // The texts over 64 tokens (the pipeline's truncation=True), counted.
      val cut = clsExpected.get(name).get("truncated").elements().asScala.count(_.asBoolean)
      assertEquals(cut.toLong, clf.metrics.values("truncatedRows"))
    }

  @Test def topKZeroAddsNoTopKColumn(): Unit = {
    val out =
      new TextClassifier().setModelPath(model("single")).setTopK(0).transformSchema(df.schema)
    assertEquals(
      Seq("id", "text", "prediction", "probability", "predicted_label"),
      out.fieldNames.toSeq
    )
  }

  @Test def refusesAnEmbeddingSpecNamingWhatItDeclares(): Unit = {
    val e = assertThrows(
      classOf[IllegalArgumentException],
      () => new TextClassifier().setModelPath(textModel("minilm.pt")).transformSchema(df.schema)
    )
    assertTrue(e.getMessage, e.getMessage.contains("outputs [embedding"))
    assertTrue(e.getMessage, e.getMessage.contains("task=\"text-classification\""))
  }
}
