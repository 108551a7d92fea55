package dev.torchspark

import java.nio.file.Files

import org.apache.spark.SparkException
import org.apache.spark.sql.{DataFrame, Row, SparkSession}
import org.apache.spark.sql.functions._
import org.apache.spark.sql.types._
import org.junit.{Assume, BeforeClass, Test}
import org.junit.Assert._

import dev.torchspark.sql.TorchEvalExec

/** Native calls bounded by bytes as well as rows (issue 25, items 3 and 4): groups split before
  * `spark.torchspark.maxBytesPerCall`, a row over it alone is a row error naming row, column, size
  * and limit, a failed encode throws its own cause and leaves no Arrow buffer behind, and every
  * path adds up rows in = rows out + rows skipped. A lowered bound keeps the data small: the
  * audit's 20 rows of 110 MB (2.2 GB in one call of the text path) become 20 rows of 110 KB under a
  * 1 MiB bound. Real local[2] SparkSession, the real .so, the ResNet-20 and diabetes fixtures.
  */
object BoundedCallsSuite {
  @BeforeClass def setUp(): Unit = {
    SparkTest.imageFixtures()
    SparkTest.generalFixtures()
    SparkTest.textFixtures()
  }

  def resnet: String = SparkTest.fixtures.resolve("resnet20.pt").toString

  /** The fixture PNGs' bytes, by file name. */
  lazy val pngs: Seq[(String, Array[Byte])] = {
    val dir = SparkTest.fixtures.resolve("images")
    Files
      .list(dir)
      .toArray
      .map(_.asInstanceOf[java.nio.file.Path])
      .filter(_.toString.endsWith(".png"))
      .sortBy(_.getFileName.toString)
      .map(p => p.getFileName.toString -> Files.readAllBytes(p))
      .toSeq
  }

  /** A PNG followed by zeros up to `size` bytes: decoders stop at its end, so it scores as the PNG
    * does, while it weighs `size` bytes.
    */
  def padded(png: Array[Byte], size: Int): Array[Byte] = java.util.Arrays.copyOf(png, size)

  /** `rows` (path, content) in one partition, in order. */
  def images(rows: Seq[(String, Array[Byte])]): DataFrame = {
    val schema = StructType(
      Seq(StructField("path", StringType), StructField("content", BinaryType))
    )
    SparkTest.session.createDataFrame(
      SparkTest.session.sparkContext.parallelize(rows.map { case (p, b) => Row(p, b) }, 1),
      schema
    )
  }

  /** `body` with the byte bound set to `bytes`, restored after. */
  def bounded[T](bytes: String)(body: => T): T = {
    SparkTest.session.conf.set(RowGroups.Conf, bytes)
    try body
    finally SparkTest.session.conf.unset(RowGroups.Conf)
  }

  /** The exception of class `cls` that `body` throws. */
  def thrown[T <: Throwable](cls: Class[T])(body: => Any): T =
    assertThrows(cls, () => { body; () })

  /** The class PyTorch predicts for a fixture file (tests/fixtures/out/expected.json). */
  def expectedClass(file: String): Double = {
    val p =
      SparkTest.doubles(SparkTest.expected(file).get("resnet20").get("probability"))
    p.indexOf(p.max).toDouble
  }
}

class BoundedCallsSuite extends SparkSuite {
  import BoundedCallsSuite._

  @Test def groupsAreCutByRowsAndByBytesLazily(): Unit = {
    val names = IndexedSeq(IndexedSeq("a", "b"))
    var read = 0
    val rows = Iterator.tabulate(10) { i => read += 1; i }
    // Row i weighs (10 * i, 1) bytes; a row of 80 or more is over the 80-byte bound alone.
    val groups =
      RowGroups[Int](rows, 4, 80L, names, (i, _) => 10L * i + 1, (i, _) => Array(10L * i, 1L))
    val first = groups.next()
    // Rows 0-3 weigh 64 bytes: the row bound (4) cuts first.
    assertEquals(Seq(0, 1, 2, 3), first.rows)
    assertEquals(0L, first.first)
    assertTrue("reads at most one row past a group", read <= 5)
    val rest = groups.toList
    // 4 (41) + 5 (51) > 80: each alone from here; 8 and 9 (81, 91) are over the bound alone and
    // go as nulls: they weigh nothing, so they join a group.
    assertEquals(List(Seq(4), Seq(5), Seq(6), Seq(7, 8, 9)), rest.map(_.rows))
    assertEquals(List(4L, 5L, 6L, 7L), rest.map(_.first))
    val last = rest.last
    assertEquals(None, last.over(0))
    val o8 = last.over(1).get
    assertEquals(("a", 80L, 81L), (o8.column, o8.bytes, o8.laneBytes))
    assertEquals(
      "row 8: column `a`: 80 bytes (the row's inputs: 81 bytes) exceed " +
        "spark.torchspark.maxBytesPerCall = 80 bytes, the most one native call takes",
      o8.message(last.first + 1, 80L)
    )
    assertTrue(last.over(2).isDefined)
  }

  @Test def eachLaneHasItsOwnBudget(): Unit = {
    // Two calls per row (a SQL node's lanes): row 1 is over the bound in lane 1 only, and both
    // rows fit lane 0 (90 bytes).
    val names = IndexedSeq(IndexedSeq("x"), IndexedSeq("y"))
    val w = Map(0 -> Array(60L, 1L), 1 -> Array(30L, 500L))
    val groups =
      RowGroups[Int](
        Iterator(0, 1),
        10,
        100L,
        names,
        (i, l) => w(i)(l),
        (i, l) => Array(w(i)(l))
      ).toList
    assertEquals(List(Seq(0, 1)), groups.map(_.rows))
    assertEquals(None, groups.head.over(1, 0))
    assertEquals("y", groups.head.over(1, 1).get.column)
  }

  @Test def theBoundIsReadAsASizeAndRefusedOutOfRange(): Unit = {
    def limit(v: String) = RowGroups.limit(k => if (k == RowGroups.Conf) Option(v) else None)
    assertEquals(256L << 20, limit(null))
    assertEquals(RowGroups.DefaultBytes, RowGroups.limit(spark))
    assertEquals(64L << 20, limit("64m"))
    assertEquals(1L << 30, limit("1g"))
    assertEquals(4096L, limit("4096"))
    for (bad <- Seq("0", "2g", "lots")) {
      val e = thrown(classOf[ConfigException])(limit(bad))
      assertTrue(e.getMessage, e.getMessage.contains(s"${RowGroups.Conf} = `$bad`"))
    }
  }

  @Test def aGroupOverTheBoundIsSplitAndEveryRowScored(): Unit = {
    // The audit's case scaled down 1000x: 20 rows of 110 KB, the bound 1 MiB instead of 2 GiB.
    val rows = (0 until 20).map { i =>
      val (name, png) = pngs(i % pngs.size)
      (name, padded(png, 110000))
    }
    for (engine <- Seq("shared", "per-task")) {
      val s = new ImageScorer()
        .setModelPath(resnet)
        .setInputCol("content")
        .setBatchSize(64)
        .setEngine(engine)
      val out = bounded("1m")(s.transform(images(rows)).select("path", "prediction").collect())
      assertEquals(20, out.length)
      out.foreach(r =>
        assertEquals(r.getString(0), expectedClass(r.getString(0)), r.getDouble(1), 0)
      )
      val m = s.metrics.values
      // 9 rows (990,000 bytes) fit 1 MiB: calls of 9, 9 and 2 rows, one forward pass each.
      assertEquals(m.toString, 3L, m("engineBatches"))
      assertEquals(
        m.toString,
        (20L, 20L, 20L, 0L),
        (m("rowsIn"), m("rowsOut"), m("rowsScored"), m("rowsSkipped"))
      )
    }
  }

  @Test def theAuditsGroupOver2GiBIsSplitAtTheDefaultBound(): Unit = {
    // The audit's rows for real: 20 rows of 110 MB (2.2 GB; the text path's 32 x batchSize rows
    // put them in one call), here in one partition of ImageScorer with batchSize 64. About 35 s
    // on 2 cores: only with -Dtorchspark.slow=true (docs/engine.md, "Bounded calls").
    Assume.assumeTrue(
      "slow: run with -Dtorchspark.slow=true",
      sys.props.contains("torchspark.slow")
    )
    val (name, png) = pngs.head
    val size = 110000000
    val rows = spark.sparkContext
      .parallelize(0 until 20, 1)
      .map(i => Row(s"$i-$name", padded(png, size)))
    val schema = StructType(
      Seq(StructField("path", StringType), StructField("content", BinaryType))
    )
    val s = new ImageScorer().setModelPath(resnet).setInputCol("content").setBatchSize(64)
    val t0 = System.nanoTime()
    val out = s.transform(spark.createDataFrame(rows, schema)).select("prediction").collect()
    val seconds = (System.nanoTime() - t0) / 1e9
    assertEquals(20, out.length)
    out.foreach(r => assertEquals(expectedClass(name), r.getDouble(0), 0))
    val m = s.metrics.values
    // 2 rows (220 MB) fit 256 MiB: 10 calls.
    assertEquals(m.toString, (20L, 20L, 10L), (m("rowsIn"), m("rowsScored"), m("engineBatches")))
    assertEquals(0L, ArrowCodec.allocatedBytes)
    println(f"20 rows of 110 MB in $seconds%.1f s")
  }

  @Test def theTextWindowIsBoundedByBytes(): Unit = {
    // A text model's call holds up to 32 x batchSize rows (sorted by length natively): 40 texts
    // of 100 bytes and batchSize 8 are one call of 5 passes; a 1,000-byte bound makes calls of
    // 10 rows, 2 passes each. Row 13 (2,000 bytes) is over the bound alone: a row error.
    val texts = (0 until 40).map(i => if (i == 13) "word " * 400 else f"text $i%04d " * 10)
    val schema = StructType(Seq(StructField("id", IntegerType), StructField("text", StringType)))
    val df = spark.createDataFrame(
      spark.sparkContext.parallelize(texts.zipWithIndex.map { case (t, i) => Row(i, t) }, 1),
      schema
    )
    def run(): (Array[Row], Map[String, Long]) = {
      val t = new TorchModel()
        .setModelPath(SparkTest.fixtures.resolve("text/ids.pt").toString)
        .setBatchSize(8)
        .setHandleInvalid("keep")
      (t.transform(df).select("id", "ids", "error").collect(), t.metrics.values)
    }
    val (free, freeMetrics) = run()
    val (split, m) = bounded("1000")(run())
    assertEquals(5L, freeMetrics("engineBatches"))
    // Calls of rows 0-9, 10-20 (13 goes as a null: it weighs nothing), 21-30 and 31-39.
    assertEquals(m.toString, 8L, m("engineBatches"))
    assertEquals((40L, 40L, 1L), (m("rowsIn"), m("rowsOut"), m("rowsWithErrors")))
    assertEquals(
      "row 13: column `text`: 2000 bytes exceed spark.torchspark.maxBytesPerCall = 1000 bytes, " +
        "the most one native call takes",
      split(13).getString(2)
    )
    (0 until 40).filter(_ != 13).foreach { i =>
      assertTrue(split(i).isNullAt(2))
      // The same token ids; a call pads them to its longest row (-1).
      def ids(r: Row) = r.getSeq[Long](1).filter(_ != -1L)
      assertEquals(s"row $i", ids(free(i)), ids(split(i)))
    }
  }

  @Test def tabularGroupsSplitByBytesGiveTheUnboundedResults(): Unit = {
    // 10 doubles a row (80 bytes): an 800-byte bound makes calls of 10 rows.
    val d = SparkTest.diabetes
    val rows = (0 until d.get("X").size).map { i =>
      Row(i, SparkTest.doubles(d.get("X").get(i)).toSeq)
    }
    val schema =
      StructType(Seq(StructField("id", IntegerType), StructField("x", ArrayType(DoubleType))))
    val df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 2), schema)
    val parts = df.rdd.mapPartitions(it => Iterator(it.size)).collect()
    def run(): (Map[Int, Double], Map[String, Long]) = {
      val t = new TorchModel()
        .setModelPath(SparkTest.generalModel("diabetes_mlp.pt"))
        .setInputCols(Array("features=x"))
        .setBatchSize(64)
      val out = t.transform(df).select("id", "prediction").collect()
      (out.map(r => r.getInt(0) -> r.getDouble(1)).toMap, t.metrics.values)
    }
    val (free, freeMetrics) = run()
    val (split, m) = bounded("800")(run())
    // Other batch shapes: equal up to oneDNN's blocking (see docs/engine.md).
    assertEquals(free.keySet, split.keySet)
    split.foreach { case (i, y) =>
      assertEquals(s"row $i", free(i), y, 1e-9)
      assertEquals(s"row $i", SparkTest.pred(i), y, 1e-4)
    }
    assertEquals(parts.map(n => (n + 9) / 10).sum.toLong, m("engineBatches"))
    assertTrue(freeMetrics.toString, freeMetrics("engineBatches") < m("engineBatches"))
    assertEquals((442L, 442L), (m("rowsIn"), m("rowsOut")))
  }

  @Test def aRowOverTheBoundIsARowErrorUnderHandleInvalid(): Unit = {
    // Row 2 weighs 300,000 bytes; the bound is 100 KiB; the others are the plain PNGs.
    val rows = pngs.take(5).zipWithIndex.map { case ((n, b), i) =>
      (n, if (i == 2) padded(b, 300000) else b)
    }
    val why = "row 2: column `content`: 300000 bytes exceed spark.torchspark.maxBytesPerCall = " +
      "102400 bytes, the most one native call takes"
    def scorer(mode: String) =
      new ImageScorer().setModelPath(resnet).setInputCol("content").setHandleInvalid(mode)
    bounded("100k") {
      val keep = scorer("keep")
      val kept = keep.transform(images(rows)).select("path", "prediction", "error").collect()
      assertEquals(5, kept.length)
      assertEquals(why, kept(2).getString(2))
      assertTrue(kept(2).isNullAt(1))
      Seq(0, 1, 3, 4).foreach { i =>
        assertTrue(kept(i).isNullAt(2))
        assertEquals(expectedClass(rows(i)._1), kept(i).getDouble(1), 0)
      }
      val k = keep.metrics.values
      assertEquals(
        k.toString,
        (5L, 5L, 1L, 0L),
        (k("rowsIn"), k("rowsOut"), k("rowsWithErrors"), k("rowsSkipped"))
      )

      val skip = scorer("skip")
      assertEquals(4L, skip.transform(images(rows)).count())
      val m = skip.metrics.values
      // Rows in = rows out + rows skipped.
      assertEquals(
        m.toString,
        (5L, 4L, 1L, 1L),
        (m("rowsIn"), m("rowsOut"), m("rowsSkipped"), m("rowsWithErrors"))
      )

      // handleInvalid=error: the task fails with the row's error, three times over, and no Arrow
      // buffer stays behind.
      for (attempt <- 1 to 3) {
        val e = thrown(classOf[SparkException])(scorer("error").transform(images(rows)).collect())
        val all = SparkTest.messages(e)
        assertTrue(all, all.contains(s"partition 0, $why (path ${rows(2)._1})"))
        assertFalse(all, all.contains("Memory was leaked"))
        assertEquals(s"attempt $attempt", 0L, ArrowCodec.allocatedBytes)
      }
    }
  }

  @Test def aFailedEncodeThrowsItsCauseAndReleasesItsBuffers(): Unit = {
    // A 4 MB binary column is built, then the next column's 2nd value is not a double: the encode
    // fails half way, with buffers allocated. Its own error comes out, and nothing stays.
    val big = Array.fill[Any](4)(new Array[Byte](1 << 20))
    val bad = Array[Any](1.0, "not a double", 3.0, 4.0)
    for (attempt <- 1 to 3) {
      val e = thrown(classOf[ClassCastException]) {
        TensorCodec.encode(
          Seq(TensorCodec.Column("a", BinaryType, big), TensorCodec.Column("b", DoubleType, bad)),
          4
        )
      }
      assertEquals(s"attempt $attempt: ${e.getSuppressed.toSeq}", 0, e.getSuppressed.length)
      assertEquals(s"attempt $attempt", 0L, ArrowCodec.allocatedBytes)
      // An image column of preprocessed values: a float array whose 3rd row holds a string.
      val arrays = Array[Any](Seq(1f, 2f), Seq(3f), Seq("x"), Seq(4f))
      thrown(classOf[ClassCastException])(
        TensorCodec.encode(Seq(TensorCodec.Column("image", ArrayType(FloatType), arrays)), 4)
      )
      assertEquals(s"attempt $attempt", 0L, ArrowCodec.allocatedBytes)
    }
  }

  @Test def theSqlNodeSplitsByBytesAndCountsRowErrors(): Unit = {
    TorchSpark.register(spark, "bounded_mlp", SparkTest.generalModel("diabetes_mlp.pt"))
    val d = SparkTest.diabetes
    val xs = (0 until 40).map(i => SparkTest.doubles(d.get("X").get(i)).toSeq)
    // Row 5: 9 values (a native row error); row 7: 200 values (1,600 bytes, over the bound).
    val rows = xs.zipWithIndex.map { case (x, i) =>
      Row(i, if (i == 5) x.take(9) else if (i == 7) Seq.fill(200)(0.5) else x)
    }
    val schema = StructType(
      Seq(StructField("id", IntegerType), StructField("x", ArrayType(DoubleType)))
    )
    spark
      .createDataFrame(spark.sparkContext.parallelize(rows, 1), schema)
      .createOrReplaceTempView("bounded_rows")
    bounded("800") {
      val df = spark.sql("SELECT id, bounded_mlp(x) AS s FROM bounded_rows")
      val out = df.collect().map(r => r.getInt(0) -> r.getStruct(1)).toMap
      // Rows in = rows out: the SQL node keeps every row, a bad one with its reason.
      assertEquals(40, out.size)
      assertTrue(out(5).getString(1), out(5).getString(1).startsWith("row 5: input `features`"))
      assertEquals(
        "row 7: column `x`: 1600 bytes exceed spark.torchspark.maxBytesPerCall = 800 bytes, the " +
          "most one native call takes",
        out(7).getString(1)
      )
      (0 until 40).filterNot(Set(5, 7)).foreach { i =>
        assertTrue(out(i).isNullAt(1))
        assertEquals(s"row $i", SparkTest.pred(i), out(i).getDouble(0), 1e-4)
      }
      val node = df.queryExecution.executedPlan.collect { case e: TorchEvalExec => e }.head
      assertEquals(40L, node.metrics("numOutputRows").value)
      assertEquals(2L, node.metrics("rowsWithErrors").value)
      // 10 rows (800 bytes) a call; row 7 goes as a null and weighs nothing: 4 calls.
      assertEquals(4L, node.metrics("batches").value)
      assertEquals(0L, ArrowCodec.allocatedBytes)
    }
  }
}
