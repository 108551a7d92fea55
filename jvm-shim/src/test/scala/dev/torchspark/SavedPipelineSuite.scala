package dev.torchspark

import java.io.RandomAccessFile
import java.nio.file.{Files, Path}

import org.apache.spark.ml.{Pipeline, PipelineModel}
import org.apache.spark.ml.classification.LogisticRegression
import org.apache.spark.sql.DataFrame
import org.apache.spark.sql.functions._
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

object SavedPipelineSuite {
  @BeforeClass def setUp(): Unit = {
    SparkTest.imageFixtures()
    SparkTest.textFixtures()
  }
}

/** Saved pipelines carry their model (docs/saved-pipelines.md): a stage saved with embedModel (the
  * default) loads and scores with the original model file gone; a copy that fails its checksum or
  * is missing is refused at load, on the driver, naming the stage, the file and the checksums.
  */
class SavedPipelineSuite extends SparkSuite {

  private def images: DataFrame =
    SparkTest
      .binaryImages("digit_*.png")
      .withColumn("label", regexp_extract(col("path"), "label(\\d)", 1).cast("double"))
      .coalesce(1)

  /** ResNet-20 and its spec copied into a fresh folder of their own (the "original" to delete). */
  private def ownModel(): Path = {
    val dir = TestDirs.dir("torchspark-saved-src")
    Files.copy(SparkTest.fixtures.resolve("resnet20.pt"), dir.resolve("resnet20.pt"))
    Files.copy(SparkTest.fixtures.resolve("resnet20.json"), dir.resolve("resnet20.json"))
    dir.resolve("resnet20.pt")
  }

  private def deleteTree(p: Path): Unit =
    if (Files.exists(p)) {
      val s = Files.walk(p)
      try s.sorted(java.util.Comparator.reverseOrder()).forEach(f => Files.delete(f))
      finally s.close()
    }

  /** Pipeline(ImageFeaturizer, LogisticRegression) fitted on the digits and saved at `to`. */
  private def savedPipeline(model: Path, to: Path, embed: Boolean = true): DataFrame = {
    val data = images
    val fitted = new Pipeline()
      .setStages(
        Array(
          new ImageFeaturizer()
            .setModelPath(model.toString)
            .setInputCol("content")
            .setOutputCol("f")
            .setEmbedModel(embed),
          new LogisticRegression().setMaxIter(5).setFeaturesCol("f")
        )
      )
      .fit(data)
    fitted.write.overwrite().save(to.toString)
    fitted.transform(data).select("path", "f", "prediction").orderBy("path")
  }

  private def stageDir(pipeline: Path): Path = {
    val s = Files.list(pipeline.resolve("stages"))
    try s.filter(_.getFileName.toString.contains("ImageFeaturizer")).findFirst().get()
    finally s.close()
  }

  @Test def aSavedPipelineScoresTheSameWithTheOriginalModelFileGone(): Unit = {
    val model = ownModel()
    val out = TestDirs.dir("torchspark-saved").resolve("pipeline")
    val before = savedPipeline(model, out).collect()
    deleteTree(model.getParent)
    val loaded = PipelineModel.load(out.toString)
    val stage = loaded.stages(0).asInstanceOf[ImageFeaturizer]
    assertEquals(
      stageDir(out).resolve("model/resnet20.pt").toAbsolutePath.toString,
      stage.getModelPath
    )
    val after = loaded.transform(images).select("path", "f", "prediction").orderBy("path").collect()
    assertEquals(24, after.length)
    assertEquals(before.toSeq, after.toSeq)
    // The copies are the original's bytes, listed in the manifest with their SHA-256.
    val manifest = SparkTest.json(stageDir(out).resolve("model/manifest.json"))
    assertEquals("resnet20.pt", manifest.get("model").asText)
    val names =
      (0 until manifest.get("files").size).map(i => manifest.get("files").get(i).get("name").asText)
    assertEquals(Seq("resnet20.pt", "resnet20.json"), names)
    val pt = SparkTest.fixtures.resolve("resnet20.pt")
    assertEquals(
      java.util.HexFormat
        .of()
        .formatHex(
          java.security.MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(pt))
        ),
      manifest.get("files").get(0).get("sha256").asText
    )
  }

  @Test def aLoadedPipelineSavedOverItsOwnDirectoryKeepsItsModel(): Unit = {
    val model = ownModel()
    val out = TestDirs.dir("torchspark-saved-over").resolve("pipeline")
    val before = savedPipeline(model, out).collect()
    deleteTree(model.getParent)
    // overwrite() deletes `out` before the stages write: the copy comes from what load() read.
    PipelineModel.load(out.toString).write.overwrite().save(out.toString)
    val copy = stageDir(out).resolve("model/resnet20.pt")
    assertArrayEquals(
      Files.readAllBytes(SparkTest.fixtures.resolve("resnet20.pt")),
      Files.readAllBytes(copy)
    )
    val again = PipelineModel.load(out.toString)
    assertEquals(
      copy.toAbsolutePath.toString,
      again.stages(0).asInstanceOf[ImageFeaturizer].getModelPath
    )
    val after = again.transform(images).select("path", "f", "prediction").orderBy("path").collect()
    assertEquals(before.toSeq, after.toSeq)
    // And a lone stage saved over its own directory, twice.
    val stage = TestDirs.dir("torchspark-saved-over1").resolve("stage")
    new ImageScorer()
      .setModelPath(SparkTest.fixtures.resolve("resnet20.pt").toString)
      .write
      .save(stage.toString)
    ImageScorer.load(stage.toString).write.overwrite().save(stage.toString)
    ImageScorer.load(stage.toString).write.overwrite().save(stage.toString)
    assertEquals(
      stage.resolve("model/resnet20.pt").toAbsolutePath.toString,
      ImageScorer.load(stage.toString).getModelPath
    )
  }

  @Test def aTextStageCarriesItsTokenizer(): Unit = {
    val out = TestDirs.dir("torchspark-saved-text").resolve("stage")
    new TextEmbedder()
      .setModelPath(SparkTest.textModel("minilm.pt"))
      .setInputCol("text")
      .write
      .save(out.toString)
    val spec = SparkTest.json(SparkTest.textDir.resolve("minilm.json"))
    val tokenizer = spec.get("inputs").get(0).get("tokenizer").asText
    assertTrue(Files.isRegularFile(out.resolve(s"model/$tokenizer")))
    assertEquals(
      out.resolve("model/minilm.pt").toAbsolutePath.toString,
      TextEmbedder.load(out.toString).getModelPath
    )
  }

  @Test def aStageSavedByReferenceKeepsItsModelPath(): Unit = {
    val model = ownModel()
    val out = TestDirs.dir("torchspark-saved-ref").resolve("pipeline")
    savedPipeline(model, out, embed = false)
    assertFalse(Files.exists(stageDir(out).resolve("model")))
    val stage = PipelineModel.load(out.toString).stages(0).asInstanceOf[ImageFeaturizer]
    assertEquals(model.toString, stage.getModelPath)
    assertFalse(stage.getEmbedModel)
  }

  @Test def rejectsACopiedModelThatFailsItsChecksum(): Unit = {
    val out = TestDirs.dir("torchspark-saved-bad").resolve("pipeline")
    savedPipeline(ownModel(), out)
    val copy = stageDir(out).resolve("model/resnet20.pt")
    val f = new RandomAccessFile(copy.toFile, "rw")
    try { f.seek(f.length / 2); val b = f.read(); f.seek(f.length / 2); f.write(b ^ 0xff) }
    finally f.close()
    val e = assertThrows(classOf[ModelLoadException], () => PipelineModel.load(out.toString))
    val msg = e.getMessage
    val manifest = SparkTest.json(stageDir(out).resolve("model/manifest.json"))
    val want = manifest.get("files").get(0).get("sha256").asText
    val got = java.util.HexFormat
      .of()
      .formatHex(
        java.security.MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(copy))
      )
    assertTrue(msg, msg.contains(stageDir(out).getFileName.toString))
    assertTrue(msg, msg.contains("resnet20.pt"))
    assertTrue(msg, msg.contains(want))
    assertTrue(msg, msg.contains(got))
    assertTrue(msg, msg.contains("fails its checksum"))
  }

  @Test def rejectsAStageDirectoryMissingItsModelFile(): Unit = {
    val out = TestDirs.dir("torchspark-saved-missing").resolve("pipeline")
    savedPipeline(ownModel(), out)
    Files.delete(stageDir(out).resolve("model/resnet20.pt"))
    val e = assertThrows(classOf[ModelLoadException], () => PipelineModel.load(out.toString))
    assertTrue(e.getMessage, e.getMessage.contains("resnet20.pt"))
    assertTrue(e.getMessage, e.getMessage.contains("is missing"))
    // With the whole copy gone (manifest too), the saved metadata still says a copy was made.
    deleteTree(stageDir(out).resolve("model"))
    val e2 = assertThrows(classOf[ModelLoadException], () => PipelineModel.load(out.toString))
    assertTrue(e2.getMessage, e2.getMessage.contains("manifest.json is missing"))
    assertTrue(e2.getMessage, e2.getMessage.contains(stageDir(out).getFileName.toString))
  }
}
