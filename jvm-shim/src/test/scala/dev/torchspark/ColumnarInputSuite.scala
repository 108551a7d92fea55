package dev.torchspark

import java.nio.file.Path

import org.apache.spark.sql.{DataFrame, Row}
import org.apache.spark.sql.execution.SparkPlan
import org.apache.spark.sql.execution.adaptive.AdaptiveSparkPlanHelper
import org.apache.spark.sql.execution.vectorized.WritableColumnVector
import org.apache.spark.sql.types._
import org.junit.{AfterClass, BeforeClass, Test}
import org.junit.Assert._

import dev.torchspark.sql.{ColumnarInput, TorchEvalExec}

/** The SQL node's Spark-columnar input path (ColumnarInput) against its row path on the same data:
  * the diabetes MLP over Parquet (vectorized reader, small reader batches that the node merges and
  * splits, dictionary-encoded and partition columns, nulls) and the in-memory cache; every result
  * equal, bit for bit. A real local[2] session, the real .so, the real fixture.
  */
object ColumnarInputSuite extends AdaptiveSparkPlanHelper {
  private var dir: Path = _
  lazy val parquet: String = dir.resolve("patients").toString

  private def fs = (0 until 10).map(i => s"f$i")

  @BeforeClass def setUp(): Unit = {
    SparkTest.generalFixtures()
    val spark = SparkTest.session
    TorchSpark.register(spark, "colmlp", SparkTest.generalModel("diabetes_mlp.pt"))
    dir = TestDirs.dir("columnar")
    val d = SparkTest.diabetes
    val n = d.get("X").size
    val rows = (0 until n).map { i =>
      val x = SparkTest.doubles(d.get("X").get(i))
      // Row 3: a null array; row 4: a null element; row 6: one value short; row 8: a null feature.
      val xs: Seq[Any] =
        if (i == 3) null
        else if (i == 4) x.toSeq.updated(2, null)
        else if (i == 6) x.toSeq.take(9)
        else x.toSeq
      val xf: Seq[Any] =
        if (xs == null) null
        else
          xs.map {
            case null      => null
            case v: Double => v.toFloat
          }
      val f: Seq[Any] = x.toSeq.zipWithIndex.map { case (v, j) =>
        if (i == 8 && j == 2) null else v
      }
      Row.fromSeq(
        Seq(i, xs, xf) ++ f ++ Seq(
          (i % 3) * 0.01,
          i.toLong,
          BigDecimal(x(0)).setScale(4, BigDecimal.RoundingMode.HALF_UP).bigDecimal,
          if (i % 2 == 0) 0.5 else -0.5
        )
      )
    }
    val schema = StructType(
      Seq(
        StructField("id", IntegerType),
        StructField("x", ArrayType(DoubleType)),
        StructField("xf", ArrayType(FloatType))
      ) ++ fs.map(StructField(_, DoubleType)) ++ Seq(
        StructField("dict", DoubleType),
        StructField("lng", LongType),
        StructField("dec", DecimalType(10, 4)),
        StructField("part", DoubleType)
      )
    )
    spark
      .createDataFrame(spark.sparkContext.parallelize(rows, 1), schema)
      .write
      .partitionBy("part")
      .parquet(parquet)
  }

  @AfterClass def tearDown(): Unit = if (dir != null) TestDirs.deleteTree(dir)

  /** The TorchEvalExec nodes of a query's executed plan (its final plan, under adaptive execution,
    * once the query ran).
    */
  def nodes(df: DataFrame): Seq[TorchEvalExec] =
    collect(df.queryExecution.executedPlan) { case e: TorchEvalExec => e }

  /** The vector kinds a Parquet read of `column` produces, per batch: class name and whether it
    * holds a dictionary (what the test data must really contain).
    */
  def vectorKinds(column: String): Set[(String, Boolean)] = {
    val df = SparkTest.session.read.parquet(parquet)
    val scan = df.queryExecution.executedPlan.collectFirst {
      case p: SparkPlan if p.supportsColumnar && p.children.isEmpty => p
    }.get
    val idx = scan.output.indexWhere(_.name == column)
    scan
      .executeColumnar()
      .mapPartitions(_.map { b =>
        val v = b.column(idx)
        val dictionary = v match {
          case w: WritableColumnVector => w.hasDictionary
          case _                       => false
        }
        (v.getClass.getSimpleName, dictionary)
      })
      .collect()
      .toSet
  }
}

class ColumnarInputSuite extends SparkSuite {
  import ColumnarInputSuite._

  private val features = (0 until 10).map(i => s"f$i").mkString(", ")
  private val nine = (0 until 9).map(i => s"f$i").mkString(", ")

  private def withConf[T](pairs: (String, String)*)(body: => T): T = {
    pairs.foreach { case (k, v) => spark.conf.set(k, v) }
    try body
    finally pairs.foreach { case (k, _) => spark.conf.unset(k) }
  }

  /** `sql` over the view with the columnar path on and off: the input path each took, and the rows
    * (by id) of each.
    */
  private def bothWays(sql: String): ((String, Map[Int, Row]), (String, Map[Int, Row])) = {
    def run(on: Boolean) = withConf(ColumnarInput.Conf -> on.toString) {
      val df = spark.sql(sql)
      val rows = df.collect().map(r => r.getInt(0) -> r).toMap
      (nodes(df).map(_.inputPath).distinct.mkString("|"), rows)
    }
    (run(true), run(false))
  }

  private def assertSameRows(a: Map[Int, Row], b: Map[Int, Row]): Unit = {
    assertEquals(b.keySet, a.keySet)
    b.foreach { case (id, r) => assertEquals(s"row id $id", r, a(id)) }
  }

  @Test def parquetColumnsReadAsColumnsGiveTheRowPathsResults(): Unit = {
    // Reader batches of 50 rows, calls of 64: batches merge and split across calls, and the
    // reader refills its vectors while a call's rows are still pending.
    withConf("spark.sql.parquet.columnarReaderBatchSize" -> "50") {
      spark.read.parquet(parquet).createOrReplaceTempView("col_patients")
      val sql =
        s"SELECT id, colmlp(x) AS a, colmlp(xf) AS b, colmlp(array($features)) AS c, " +
          s"colmlp(array($nine, dict)) AS d, colmlp(array($nine, part)) AS e FROM col_patients"
      val ((colPath, col), (rowPath, row)) = bothWays(sql)
      assertEquals("columnar", colPath)
      assertEquals("rows", rowPath)
      assertSameRows(col, row)
      assertEquals(442, col.size)
      // The clean rows score as PyTorch did; the bad ones carry their row error in both ways.
      (0 until 442).filterNot(Set(3, 4, 6, 8)).foreach { i =>
        assertTrue(col(i).getStruct(1).isNullAt(1))
        assertEquals(s"row $i", SparkTest.pred(i), col(i).getStruct(1).getDouble(0), 1e-4)
        assertEquals(s"row $i", SparkTest.pred(i), col(i).getStruct(3).getDouble(0), 1e-4)
      }
      Seq(3, 4, 6).foreach { i =>
        Seq(1, 2).foreach(k => assertNotNull(s"row $i", col(i).getStruct(k).getString(1)))
      }
      assertNotNull(col(8).getStruct(3).getString(1))
      val explain = spark.sql(sql).queryExecution.executedPlan.toString
      assertTrue(explain, explain.contains("input=columnar"))
    }
  }

  @Test def offHeapVectorsAreCopiedFromTheirAddress(): Unit = {
    withConf(
      "spark.sql.columnVector.offheap.enabled" -> "true",
      "spark.sql.parquet.columnarReaderBatchSize" -> "30"
    ) {
      spark.read.parquet(parquet).createOrReplaceTempView("col_offheap")
      val ((colPath, col), (_, row)) = bothWays(
        s"SELECT id, colmlp(x) AS a, colmlp(xf) AS b, colmlp(array($features)) AS c, " +
          s"colmlp(array($nine, dict)) AS d FROM col_offheap"
      )
      assertEquals("columnar", colPath)
      assertSameRows(col, row)
      assertTrue(vectorKinds("f0").forall(_._1 == "OffHeapColumnVector"))
    }
  }

  @Test def theTestDataHoldsDictionaryAndConstantVectors(): Unit = {
    // Without these the traps above would not be exercised.
    assertTrue(vectorKinds("dict").toString, vectorKinds("dict").exists(_._2))
    assertEquals(Set("ConstantColumnVector"), vectorKinds("part").map(_._1))
  }

  @Test def theColumnarPathCountsItsBatchesAndMergesSmallOnes(): Unit = {
    withConf("spark.sql.parquet.columnarReaderBatchSize" -> "10") {
      spark.read.parquet(parquet).createOrReplaceTempView("col_small")
      val df = spark.sql(s"SELECT id, colmlp(array($features)) AS c FROM col_small")
      assertEquals(442, df.collect().length)
      val node = nodes(df).head
      assertEquals("columnar", node.inputPath)
      val read = node.metrics("columnarBatches").value
      val calls = node.metrics("batches").value
      // 10-row reader batches, calls of up to 8,192 rows (the engine's auto batch for this
      // model): about 45 batches read, merged into one call per file.
      assertTrue(s"$read batches read", read >= 45)
      assertTrue(s"$calls calls", calls <= 2)
    }
  }

  @Test def aRowOverTheByteBoundIsTheSameRowErrorBothWays(): Unit = {
    // 8 rows' x a call (80 bytes each, 640 bytes) across 50-row reader batches: many calls
    // pending while the reader refills its vectors.
    withConf(RowGroups.Conf -> "640", "spark.sql.parquet.columnarReaderBatchSize" -> "50") {
      spark.read.parquet(parquet).createOrReplaceTempView("col_bounded")
      val ((colPath, col), (_, row)) =
        bothWays("SELECT id, colmlp(x) AS a, colmlp(array(f0, f1)) AS b FROM col_bounded")
      assertEquals("columnar", colPath)
      assertSameRows(col, row)
    }
    withConf(RowGroups.Conf -> "60") {
      spark.read.parquet(parquet).createOrReplaceTempView("col_bounded")
      val ((colPath, col), (_, row)) =
        bothWays("SELECT id, colmlp(x) AS a FROM col_bounded")
      assertEquals("columnar", colPath)
      assertSameRows(col, row)
      val err = col(0).getStruct(1).getString(1)
      assertTrue(err, err.contains("exceed spark.torchspark.maxBytesPerCall = 60 bytes"))
    }
  }

  @Test def theCacheIsReadAsColumns(): Unit = {
    val cached = spark.read
      .parquet(parquet)
      .select(
        "id",
        (0 until 10).map(i => s"f$i") ++
          Seq("dict", "part"): _*
      )
      .cache()
    try {
      cached.createOrReplaceTempView("col_cached")
      val ((colPath, col), (_, row)) =
        bothWays(
          s"SELECT id, colmlp(array($features)) AS c, colmlp(array($nine, part)) AS e " +
            "FROM col_cached"
        )
      assertEquals("columnar", colPath)
      assertSameRows(col, row)
      assertEquals(442, col.size)
    } finally cached.unpersist(blocking = true)
  }

  @Test def decimalsAndExpressionsKeepTheRowPath(): Unit = {
    spark.read.parquet(parquet).createOrReplaceTempView("col_other")
    // A decimal column (array(...) casts it with the doubles) and an expression over a column.
    val ((p1, a1), (_, b1)) =
      bothWays(s"SELECT id, colmlp(array($nine, dec)) AS d FROM col_other")
    assertEquals("rows", p1)
    assertSameRows(a1, b1)
    val ((p2, a2), (_, b2)) =
      bothWays(s"SELECT id, colmlp(array($nine, f9 * 2)) AS d FROM col_other")
    assertEquals("rows", p2)
    assertSameRows(a2, b2)
  }
}
