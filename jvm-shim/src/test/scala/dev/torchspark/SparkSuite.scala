package dev.torchspark

import java.nio.file.{Files, Path, Paths}

import scala.jdk.CollectionConverters._

import com.fasterxml.jackson.databind.{JsonNode, ObjectMapper}
import org.apache.spark.ml.linalg.{SQLDataTypes, Vectors}
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.types._
import org.junit.Assert._

/** What every Spark suite shares: one local[2] session for the whole test JVM (surefire runs every
  * suite in one fork; Spark's shutdown hook stops it), the fixtures (made by their committed
  * scripts when missing) and the oracles they record, and the helpers the suites need.
  *
  * Suites extend [[SparkSuite]] (its `spark` is [[session]]) and call the fixture set they read
  * (`SparkTest.imageFixtures()`, `generalFixtures()`, `textFixtures()`) from their `@BeforeClass`.
  * A suite that changes the session's conf unsets it in `finally`; temp views and functions it
  * registers stay (names are per suite).
  */
object SparkTest {
  val repo: Path = Paths.get(System.getProperty("torchspark.repo", "..")).toAbsolutePath.normalize
  val fixtures: Path = repo.resolve("tests/fixtures/out")
  val generalDir: Path = fixtures.resolve("general")
  val textDir: Path = fixtures.resolve("text")

  private var current: SparkSession = _

  /** The shared session (made on first use, again if a test stopped it). Suites read it as
    * [[SparkSuite.spark]].
    */
  def session: SparkSession = synchronized {
    if (current == null || current.sparkContext.isStopped) {
      current = SparkSession
        .builder()
        .master("local[2]")
        .appName("torchspark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    }
    current
  }

  private val made = scala.collection.mutable.Set.empty[String]

  /** Runs tests/fixtures/`script` into `dir` unless `marker` (a file under `dir`) exists. */
  private def ensure(script: String, dir: Path, marker: String*): Unit = synchronized {
    if (!made(script) && !marker.forall(m => Files.exists(dir.resolve(m)))) {
      val p = new ProcessBuilder(
        repo.resolve(".venv/bin/python").toString,
        repo.resolve(s"tests/fixtures/$script").toString,
        dir.toString
      ).inheritIO().start()
      assertEquals(script, 0, p.waitFor())
    }
    made += script
  }

  /** The image fixtures (ResNet-20, the tuple net, the `.pt2` packages, images, expected.json). */
  def imageFixtures(): Unit =
    ensure("make_fixtures.py", fixtures, "expected.json", "tuple_net_cuda.pt2")

  /** The general fixtures (diabetes MLP, segmentation, detection, two_io). */
  def generalFixtures(): Unit = ensure("make_general_fixtures.py", generalDir, "manifest.json")

  /** The text fixtures (all-MiniLM-L6-v2 and its tokenizer, text_expected.json). */
  def textFixtures(): Unit = ensure("make_text_fixtures.py", textDir, "text_expected.json")

  def resnet: String = fixtures.resolve("resnet20.pt").toString
  def generalModel(name: String): String = generalDir.resolve(name).toString
  def textModel(name: String): String = textDir.resolve(name).toString

  private val mapper = new ObjectMapper()
  def json(path: Path): JsonNode = mapper.readTree(path.toFile)
  def doubles(n: JsonNode): Array[Double] = n.elements().asScala.map(_.asDouble).toArray

  /** PyTorch's numbers for every fixture image, by file name (expected.json). */
  lazy val expected: Map[String, JsonNode] =
    json(fixtures.resolve("expected.json"))
      .get("images")
      .elements()
      .asScala
      .map(n => n.get("file").asText -> n)
      .toMap

  /** The tolerance against PyTorch for an image file: JPEG decoders differ in their last bits. */
  def tol(file: String): Double = if (file.endsWith(".jpg")) 2e-2 else 1e-5

  /** binaryFile rows (path, modificationTime, length, content) of the fixture images `glob`. */
  def binaryImages(glob: String = "*"): DataFrame =
    session.read
      .format("binaryFile")
      .option("pathGlobFilter", glob)
      .load(fixtures.resolve("images").toString)

  lazy val diabetes: JsonNode = json(generalDir.resolve("diabetes.json"))
  lazy val featureNames: Seq[String] =
    diabetes.get("feature_names").elements().asScala.map(_.asText).toSeq

  /** PyTorch's predictions of the diabetes MLP, by row. */
  lazy val pred: Array[Double] = doubles(diabetes.get("pred"))

  /** id, y, x (array<double>), sv (the same values as a sparse ML Vector), and one double column
    * per feature: the 442 diabetes rows in two partitions, cached.
    */
  lazy val diabetesDf: DataFrame = {
    val xs = diabetes.get("X").elements().asScala.map(doubles).toSeq
    val ys = doubles(diabetes.get("y"))
    val rows = xs.zipWithIndex.map { case (x, i) =>
      Row.fromSeq(Seq(i, ys(i), x.toSeq, Vectors.dense(x).toSparse) ++ x)
    }
    val schema = StructType(
      Seq(
        StructField("id", IntegerType),
        StructField("y", DoubleType),
        StructField("x", ArrayType(DoubleType)),
        StructField("sv", SQLDataTypes.VectorType)
      ) ++ featureNames.map(StructField(_, DoubleType))
    )
    session.createDataFrame(session.sparkContext.parallelize(rows, 2), schema).cache()
  }

  lazy val textExpected: JsonNode = json(textDir.resolve("text_expected.json"))
  lazy val texts: Seq[String] = textExpected.get("texts").elements().asScala.map(_.asText).toSeq

  /** id, text: every text of text_expected.json, in two partitions, cached. */
  lazy val textsDf: DataFrame = {
    val rows = texts.zipWithIndex.map { case (t, i) => Row(i, t) }
    val schema = StructType(Seq(StructField("id", IntegerType), StructField("text", StringType)))
    session.createDataFrame(session.sparkContext.parallelize(rows, 2), schema).cache()
  }

  def maxDiff(a: Array[Double], b: Array[Double]): Double = {
    assertEquals(b.length, a.length)
    a.zip(b).map { case (x, y) => math.abs(x - y) }.foldLeft(0.0)(math.max)
  }

  /** One Arrow batch of one binary column (encoded images, as binaryFile's `content`). */
  def binaryBatch(values: Array[Any]): Array[Byte] =
    TensorCodec.encode(Seq(TensorCodec.Column("content", BinaryType, values)), values.length)

  /** An exception's messages and its causes', outermost first. */
  def messages(e: Throwable): String =
    Iterator.iterate(e)(_.getCause).takeWhile(_ != null).map(_.getMessage).mkString(" | ")
}

/** The base of every Spark suite: the shared session and helpers of [[SparkTest]]. */
abstract class SparkSuite {
  def spark: SparkSession = SparkTest.session
}
