package dev.torchspark

import java.nio.file.{Files, Path, StandardCopyOption}
import java.util.concurrent.ConcurrentLinkedQueue

import scala.jdk.CollectionConverters._

import org.apache.hadoop.conf.Configuration
import org.apache.logging.log4j.{Level, LogManager}
import org.apache.logging.log4j.core.{LogEvent, Logger => CoreLogger}
import org.apache.logging.log4j.core.appender.AbstractAppender
import org.apache.logging.log4j.core.config.{Configurator, Property}
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** The lifecycle log lines (docs/logging.md) as Spark's log4j2 receives them: an in-memory appender
  * on `dev.torchspark` at DEBUG, a real local[2] session, the real .so and models.
  */
object LogsSuite {
  @BeforeClass def setUp(): Unit = {
    SparkTest.generalFixtures()
    SparkTest.imageFixtures()
  }

  final case class Line(logger: String, level: Level, message: String)

  private final class Memory
      extends AbstractAppender("torchspark-logs-suite", null, null, true, Property.EMPTY_ARRAY) {
    val lines = new ConcurrentLinkedQueue[Line]()
    override def append(e: LogEvent): Unit =
      lines.add(Line(e.getLoggerName, e.getLevel, e.getMessage.getFormattedMessage))
  }

  /** `body`'s result and every line logged under `dev.torchspark` (DEBUG and up) while it ran. */
  def captured[T](body: => T): (T, Seq[Line]) = {
    val logger = LogManager.getLogger("dev.torchspark").asInstanceOf[CoreLogger]
    val memory = new Memory
    memory.start()
    logger.addAppender(memory)
    // The config's level reaches the child loggers (dev.torchspark.model, ...); the Logger's not.
    val level = logger.getContext.getConfiguration.getLoggerConfig("dev.torchspark").getLevel
    Configurator.setLevel("dev.torchspark", Level.DEBUG)
    try {
      val out = body
      (out, memory.lines.asScala.toSeq)
    } finally {
      logger.removeAppender(memory)
      Configurator.setLevel("dev.torchspark", level)
      memory.stop()
    }
  }
}

class LogsSuite extends SparkSuite {
  import LogsSuite._
  import SparkTest._

  /** diabetes_mlp.pt and its spec copied to a new folder: a path this JVM has not loaded. */
  private def freshMlp(): Path = {
    val d = TestDirs.dir("torchspark-logs")
    Seq("diabetes_mlp.pt", "diabetes_mlp.json").foreach { f =>
      Files.copy(generalDir.resolve(f), d.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    d.resolve("diabetes_mlp.pt")
  }

  private def mlp(path: Path, batch: Int) =
    new TorchModel()
      .setModelPath(path.toString)
      .setInputCols(Array("features=x"))
      .setBatchSize(batch)

  private def about(lines: Seq[Line], logger: String, level: Level, text: String): Seq[Line] =
    lines.filter(l => l.logger == logger && l.level == level && l.message.contains(text))

  @Test def modelLoadReloadAndEngineConfigurationAreLoggedOnceEach(): Unit = {
    val path = freshMlp()
    val (_, first) = captured(assertEquals(442L, mlp(path, 64).transform(diabetesDf).count()))
    val all = first.mkString("\n")
    assertEquals(
      all,
      1,
      about(first, "dev.torchspark.model", Level.INFO, s"loaded model $path").size
    )
    assertTrue(
      all,
      about(first, "dev.torchspark.model", Level.DEBUG, s"model $path: a local").nonEmpty
    )
    val engines = about(first, "dev.torchspark.engine", Level.INFO, s"engine for $path")
    // The driver's check opens the model with one thread, the tasks with theirs: at most two.
    assertTrue(all, engines.nonEmpty && engines.size <= 2)
    assertTrue(all, engines.forall(_.message.contains("\"mode\": \"shared\"")))
    assertTrue(all, first.forall(l => !l.message.contains("reloaded")))

    // The same bytes written again with a new time: the registry reloads, and says why.
    Files.write(path, Files.readAllBytes(path))
    path.toFile.setLastModified(path.toFile.lastModified() + 5000)
    val (_, second) = captured(mlp(path, 64).transform(diabetesDf).count())
    val reloads = about(second, "dev.torchspark.model", Level.INFO, s"reloaded model $path")
    assertEquals(second.mkString("\n"), 1, reloads.size)
    assertTrue(reloads.head.message, reloads.head.message.contains("changed on disk"))
    assertFalse(second.exists(_.message.startsWith("loaded model")))
  }

  @Test def aJobOfManyBatchesLogsNoMoreLinesThanAJobOfOne(): Unit = {
    val path = freshMlp()
    val one = diabetesDf.repartition(1)
    mlp(path, 442).transform(one).count() // the load, outside both counts
    val (_, oneBatch) = captured(assertEquals(442L, mlp(path, 442).transform(one).count()))
    val (_, manyBatches) = captured(assertEquals(442L, mlp(path, 4).transform(one).count()))
    // The open of a loaded model is a DEBUG line per task: the count is not vacuous.
    assertTrue(about(oneBatch, "dev.torchspark.model", Level.DEBUG, "already loaded").nonEmpty)
    assertTrue(
      s"one batch:\n${oneBatch.mkString("\n")}\n111 batches:\n${manyBatches.mkString("\n")}",
      manyBatches.size <= oneBatch.size
    )
  }

  @Test def nodeCacheFetchHitAndRefusalAreLogged(): Unit = {
    val store = TestDirs.dir("torchspark-logs-store")
    Seq("resnet20.pt", "resnet20.json").foreach { f =>
      Files.copy(fixtures.resolve(f), store.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    val cache = TestDirs.dir("torchspark-logs-cache")
    System.setProperty("torchspark.cache.dir", cache.toString)
    try {
      val uri = s"file://${store.resolve("resnet20.pt")}"
      val (_, lines) = captured {
        ModelSource.fetch(uri, new Configuration())
        ModelSource.fetch(uri, new Configuration())
      }
      val all = lines.mkString("\n")
      val fetched = about(lines, "dev.torchspark.model", Level.INFO, s"fetched model $uri")
      assertEquals(all, 1, fetched.size)
      assertTrue(
        all,
        fetched.head.message.contains(s"${Files.size(store.resolve("resnet20.pt"))} bytes")
      )
      assertEquals(all, 1, about(lines, "dev.torchspark.model", Level.DEBUG, "node cache hit").size)

      // A spec pinning another digest: refused, with the reason, at WARN.
      val spec = store.resolve("resnet20.json")
      val text = new String(Files.readAllBytes(spec), "UTF-8")
      Files.write(
        spec,
        text.replaceFirst("\\{", "{\"sha256\": \"" + "0" * 64 + "\", ").getBytes("UTF-8")
      )
      val (_, refused) = captured {
        val e = org.junit.Assert.assertThrows(
          classOf[ModelLoadException],
          () => { ModelSource.fetch(uri, new Configuration()); () }
        )
        e
      }
      val warn = about(refused, "dev.torchspark.model", Level.WARN, s"model $uri: not fetched")
      assertEquals(refused.mkString("\n"), 1, warn.size)
      assertTrue(warn.head.message, warn.head.message.contains("the spec pins " + "0" * 64))
    } finally {
      System.clearProperty("torchspark.cache.dir")
      Seq(store, cache).foreach(deleteTree)
    }
  }

  private def deleteTree(p: Path): Unit = {
    val all = Files.walk(p)
    try all.sorted(java.util.Comparator.reverseOrder[Path]()).forEach(f => Files.delete(f))
    finally all.close()
  }
}
