package dev.torchspark

import org.junit.Test
import org.junit.Assert._

import dev.torchspark.sql.ConfFunctions
import dev.torchspark.sql.ConfFunctions.Entry

/** `spark.torchspark.functions.*` as TorchSparkExtensions reads it (no session: parsing only; the
  * functions are called through `spark-sql` and Spark Connect in tests/python/test_sql_conf.py and
  * tests/connect).
  */
class ConfFunctionsSuite {
  private val P = ConfFunctions.Prefix

  private def refused(conf: (String, String)*): String =
    assertThrows(classOf[ConfigException], () => { ConfFunctions.parse(conf); () }).getMessage

  @Test def readsFunctionsAndTheirOptionsWithRegistersDefaults(): Unit = {
    val conf = Seq(
      s"${P}diabetes" -> " /m/diabetes_mlp.pt ",
      s"${P}diabetes.numThreads" -> "2",
      s"${P}diabetes.engine" -> "per-task",
      s"${P}classify" -> "hdfs://nn/m/resnet20.pt",
      s"${P}classify.device" -> "cuda",
      "spark.torchspark.maxBytesPerCall" -> "1m",
      "spark.master" -> "local[1]"
    )
    assertEquals(
      Seq(
        Entry("classify", "hdfs://nn/m/resnet20.pt", "cuda", 1, "shared"),
        Entry("diabetes", "/m/diabetes_mlp.pt", "cpu", 2, "per-task")
      ),
      ConfFunctions.parse(conf)
    )
    assertEquals(Nil, ConfFunctions.parse(Seq("spark.master" -> "local")))
  }

  @Test def aBadKeyOrValueIsRefusedNamingTheKey(): Unit = {
    val m = s"${P}m" -> "/m.pt"
    def check(message: String, key: String, why: String): Unit = {
      assertTrue(message, message.startsWith(s"$key: "))
      assertTrue(message, message.contains(why))
    }
    check(refused(m, s"${P}m.threads" -> "2"), s"${P}m.threads", "unknown option `threads`")
    check(refused(s"${P}x.device" -> "cpu"), s"${P}x.device", s"${P}x is not set")
    check(refused(s"${P}my-model" -> "/m.pt"), s"${P}my-model", "not a SQL function name")
    check(refused(s"${P}m" -> " "), s"${P}m", "model path or URI is empty")
    check(refused(m, s"${P}m.numThreads" -> "two"), s"${P}m.numThreads", "`two`")
    check(refused(m, s"${P}m.numThreads" -> "-1"), s"${P}m.numThreads", "`-1`")
    check(refused(m, s"${P}m.engine" -> "fast"), s"${P}m.engine", "shared or per-task")
  }
}
