package dev.torchspark

import java.nio.file.Files

import org.apache.spark.ml.{Pipeline, PipelineModel, PipelineStage, Transformer}
import org.apache.spark.ml.classification.LogisticRegression
import org.apache.spark.ml.feature.VectorAssembler
import org.apache.spark.ml.linalg.Vector
import org.apache.spark.ml.param.{ParamMap, Params}
import org.apache.spark.ml.util.MLWritable
import org.apache.spark.sql.{DataFrame, Row}
import org.apache.spark.sql.functions._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** The contract every torchspark transformer keeps with Spark ML, run over each of them (one
  * [[TransformerContractSuite.Case]] per transformer): its params round-trip through `copy` and
  * through write/read (the saved class is the transformer's own), and a Pipeline around it fits,
  * transforms, saves and loads, the loaded pipeline giving the same rows and values.
  *
  * Only public API: a transformer that becomes a preset over another (ImageScorer over TorchModel)
  * runs here unchanged; the output columns compared are whatever the transformer adds.
  */
object TransformerContractSuite {
  @BeforeClass def setUp(): Unit = {
    SparkTest.imageFixtures()
    SparkTest.generalFixtures()
    SparkTest.textFixtures()
  }

  /** One transformer under the contract.
    *
    * @param make
    *   the transformer with every param the test can set away from its default
    * @param load
    *   its companion's `load`
    * @param data
    *   the rows it runs on, in one partition (one task: the engine runs the same passes every time,
    *   so values compare within `tolerance`), with a unique `key` column
    * @param around
    *   the Pipeline's stages with the transformer in its place (an assembler before it, a
    *   classifier after it)
    * @param check
    *   what the fitted pipeline's output must hold beyond equality (PyTorch's numbers, accuracy)
    */
  final case class Case(
      name: String,
      make: () => Transformer with MLWritable,
      load: String => Transformer,
      data: () => DataFrame,
      key: String,
      around: Transformer => Array[PipelineStage],
      check: DataFrame => Unit = _ => (),
      tolerance: Double = 1e-9
  )

  private def images: DataFrame =
    SparkTest
      .binaryImages("digit_*.png")
      .withColumn("label", regexp_extract(col("path"), "label(\\d)", 1).cast("double"))
      .coalesce(1)

  private def lr = new LogisticRegression().setMaxIter(5)

  val cases: Seq[Case] = Seq(
    Case(
      "ImageScorer",
      () =>
        new ImageScorer()
          .setModelPath(SparkTest.resnet)
          .setInputCol("content")
          .setBatchSize(8)
          .setTopK(3)
          .setHandleInvalid("keep")
          .setErrorCol("why"),
      ImageScorer.load,
      () => images,
      "path",
      t => Array(t),
      out =>
        out.select("path", "prediction").collect().foreach { r =>
          val file = r.getString(0).substring(r.getString(0).lastIndexOf('/') + 1)
          val p = SparkTest.doubles(SparkTest.expected(file).get("resnet20").get("probability"))
          assertEquals(file, p.indexOf(p.max).toDouble, r.getDouble(1), 0.0)
        }
    ),
    Case(
      "ImageFeaturizer",
      () =>
        new ImageFeaturizer()
          .setModelPath(SparkTest.resnet)
          .setInputCol("content")
          .setOutputCol("f")
          .setBatchSize(8),
      ImageFeaturizer.load,
      () => images,
      "path",
      t => Array(t, lr.setFeaturesCol("f"))
    ),
    Case(
      "TorchModel",
      () =>
        new TorchModel()
          .setModelPath(SparkTest.generalModel("diabetes_mlp.pt"))
          .setInputCols(Array("features=assembled"))
          .setOutputCols(Array("prediction=progression"))
          .setBatchSize(64)
          .setHandleInvalid("keep"),
      TorchModel.load,
      () => SparkTest.diabetesDf.coalesce(1),
      "id",
      t =>
        Array(
          new VectorAssembler()
            .setInputCols(SparkTest.featureNames.toArray)
            .setOutputCol("assembled"),
          t
        ),
      out =>
        out.select("id", "progression").collect().foreach { r =>
          assertEquals(s"row ${r.getInt(0)}", SparkTest.pred(r.getInt(0)), r.getDouble(1), 1e-5)
        }
    ),
    Case(
      "TextEmbedder",
      () =>
        new TextEmbedder()
          .setModelPath(SparkTest.textModel("minilm.pt"))
          .setOutputCol("features")
          .setBatchSize(16)
          .setHandleInvalid("keep")
          .setErrorCol("why"),
      TextEmbedder.load,
      // A learnable label (is the text mostly ASCII letters?) on the 36 texts under 40 tokens.
      () =>
        SparkTest.textsDf
          .where("id < 36")
          .selectExpr(
            "id",
            "text",
            "CAST(length(regexp_replace(text, '[^A-Za-z]', '')) * 2 > length(text) AS DOUBLE) " +
              "AS label"
          )
          .coalesce(1),
      "id",
      t => Array(t, lr),
      out => {
        val rows = out.select("label", "prediction").collect()
        val right = rows.count(r => r.getDouble(0) == r.getDouble(1))
        assertTrue(s"$right of ${rows.length} right on the training rows", right >= 27)
      }
    )
  )

  /** Where a stage saved at `stageDir` with its model keeps the copy of `t`'s model. */
  def copyOf(stageDir: String, t: Params): String =
    java.nio.file.Paths
      .get(
        stageDir,
        "model",
        new java.io.File(t.getOrDefault(t.getParam("modelPath")).toString).getName
      )
      .toAbsolutePath
      .toString

  /** Param name -> value (arrays as Seqs, so that equal arrays compare equal). */
  def params(p: Params): Map[String, Any] =
    p.extractParamMap()
      .toSeq
      .map { pair =>
        pair.param.name -> (pair.value match {
          case a: Array[_] => a.toSeq
          case v           => v
        })
      }
      .toMap

  /** `a` and `b` equal: doubles and floats (also inside vectors, arrays and structs) within `tol`,
    * everything else exactly.
    */
  def same(where: String, a: Any, b: Any, tol: Double): Unit = (a, b) match {
    case (null, null)                     => ()
    case (x: Double, y: Double)           => assertEquals(where, x, y, tol)
    case (x: Float, y: Float)             => assertEquals(where, x.toDouble, y.toDouble, tol)
    case (x: Vector, y: Vector)           => same(where, x.toArray.toSeq, y.toArray.toSeq, tol)
    case (x: Array[Byte], y: Array[Byte]) => assertArrayEquals(where, x, y)
    case (x: Row, y: Row)                 => same(where, x.toSeq, y.toSeq, tol)
    case (x: Seq[_], y: Seq[_])           =>
      assertEquals(s"$where: length", x.length, y.length)
      x.indices.foreach(i => same(s"$where[$i]", x(i), y(i), tol))
    case _ => assertEquals(where, a, b)
  }
}

class TransformerContractSuite extends SparkSuite {
  import TransformerContractSuite._

  @Test def paramsRoundTripThroughCopyAndWriteRead(): Unit = cases.foreach { c =>
    val dir = TestDirs.dir(s"torchspark-contract-${c.name}")
    val t = c.make()
    assertEquals(c.name, params(t), params(t.copy(ParamMap.empty)))
    val path = dir.resolve("stage").toString
    t.write.overwrite().save(path)
    val loaded = c.load(path)
    assertEquals(c.name, t.getClass, loaded.getClass)
    assertEquals(c.name, t.uid, loaded.uid)
    // Saved with its model (embedModel's default): loaded pointing at the stage's copy.
    assertEquals(c.name, params(t) - "modelPath", params(loaded) - "modelPath")
    assertEquals(c.name, copyOf(path, t), loaded.getOrDefault(loaded.getParam("modelPath")))
    // The saved metadata names the transformer's own class: saved pipelines keep loading.
    val meta = spark.read.text(dir.resolve("stage/metadata").toString).head().getString(0)
    val saved = new com.fasterxml.jackson.databind.ObjectMapper().readTree(meta).get("class")
    assertEquals(c.name, s"dev.torchspark.${c.name}", saved.asText)
  }

  @Test def aPipelineSavedByAnOlderJarLoadsAndGivesTheColumnsItGave(): Unit = {
    // Saved by the jar of main before the score columns' rename (tests/fixtures/saved/README.md,
    // make_saved_pipelines.py), on this Spark line: an ImageScorer at the defaults of then
    // (predictedLabel, topK), an ImageFeaturizer, an ImageScorer with every column named.
    val saved =
      SparkTest.repo.resolve(s"tests/fixtures/saved/image-pipeline-spark${SparkLine.SPARK}")
    val data = images // the shared session first: load would make one without a master
    val model = PipelineModel.load(saved.toString)
    assertEquals(
      Seq("ImageScorer", "ImageFeaturizer", "ImageScorer"),
      model.stages.map(_.getClass.getSimpleName).toSeq
    )
    // Saved with a model name of its own: pointed at this fixture, as on a new cluster.
    model.stages.foreach(s => s.set(s.getParam("modelPath"), SparkTest.resnet))
    val (old, named) = (model.stages(0).asInstanceOf[ImageScorer], model.stages(2))
    assertEquals("predictedLabel", old.getPredictedLabelCol)
    assertEquals("topK", old.getTopKCol)
    val out = model.transform(data)
    // The columns it gave then, no more: its loaded defaults are the old names (no copies).
    val cols = Seq("prediction", "probability", "predictedLabel", "topK", "embedding") ++
      Seq("p2", "q2", "l2", "k2")
    assertEquals(cols, out.columns.toSeq.diff(data.columns.toSeq))
    assertEquals(2, named.asInstanceOf[ImageScorer].getTopK)
    val labels = SparkTest.json(SparkTest.fixtures.resolve("resnet20.json")).get("labels")
    val rows =
      out.select("path", "prediction", "predictedLabel", "topK", "p2", "l2", "k2").collect()
    assertEquals(24, rows.length)
    rows.foreach { r =>
      val file = r.getString(0).substring(r.getString(0).lastIndexOf('/') + 1)
      val p = SparkTest.doubles(SparkTest.expected(file).get("resnet20").get("probability"))
      val best = p.indexOf(p.max)
      assertEquals(file, best.toDouble, r.getDouble(1), 0.0)
      assertEquals(file, labels.get(best).asText, r.getString(2))
      assertEquals(file, 5, r.getSeq[Row](3).size)
      assertEquals(file, best.toDouble, r.getDouble(4), 0.0)
      assertEquals(file, labels.get(best).asText, r.getString(5))
      assertEquals(file, 2, r.getSeq[Row](6).size)
    }
  }

  @Test def aPipelineFitsTransformsSavesAndLoadsToTheSameRows(): Unit = cases.foreach { c =>
    val dir = TestDirs.dir(s"torchspark-contract-${c.name}")
    val data = c.data().cache()
    try {
      val t = c.make()
      val fitted = new Pipeline().setStages(c.around(t)).fit(data)
      fitted.write.overwrite().save(dir.resolve("pipeline").toString)
      val reloaded = PipelineModel.load(dir.resolve("pipeline").toString)
      val stage = reloaded.stages.find(_.uid == t.uid)
      assertTrue(s"${c.name}: not in the loaded pipeline", stage.isDefined)
      assertEquals(c.name, params(t) - "modelPath", params(stage.get) - "modelPath")
      val (a, b) = (fitted.transform(data), reloaded.transform(data))
      assertEquals(c.name, a.schema, b.schema)
      val added = a.columns.filterNot(data.columns.contains)
      assertTrue(s"${c.name}: no output columns", added.nonEmpty)
      def rows(df: DataFrame) = df.select(c.key, added.toIndexedSeq: _*).orderBy(c.key).collect()
      val (ra, rb) = (rows(a), rows(b))
      assertEquals(c.name, data.count(), ra.length.toLong)
      assertEquals(c.name, ra.length, rb.length)
      ra.zip(rb).foreach { case (x, y) =>
        assertEquals(c.name, x.get(0), y.get(0))
        added.indices.foreach { i =>
          same(
            s"${c.name}: ${c.key} ${x.get(0)}: ${added(i)}",
            x.get(i + 1),
            y.get(i + 1),
            c.tolerance
          )
        }
      }
      c.check(b)
    } finally data.unpersist()
  }
}
