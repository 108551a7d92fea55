package dev.torchspark

import java.nio.file.{Files, Paths}
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicLong

import scala.jdk.CollectionConverters._

import org.apache.spark.sql.SparkSession
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** The process around the native library from the JVM (docs/engine.md, "Lifecycle"): a model handle
  * closed while Spark tasks are in calls on it, a pending discarded while it is being collected,
  * and JVMs that exit (System.exit, Runtime.halt, main returning) while forward passes run. Real
  * local[2] SparkSession, the real .so, the ResNet-20 fixture.
  */
object LifecycleSuite {
  @BeforeClass def setUp(): Unit = SparkTest.imageFixtures()

  def resnet: String = SparkTest.fixtures.resolve("resnet20.pt").toString
  def png: String = SparkTest.fixtures.resolve("images/digit_00_label0.png").toString

  /** A ModelConfig of the ResNet-20 fixture with `engine` (JSON object text). */
  def config(threads: Int, engine: String): String =
    s"""{"model_path": ${NativeRunner.json(resnet)}, "device": "cpu", "num_threads": $threads, """ +
      s""""precision": "fp32", "engine": $engine}"""

  val shared = """{"mode": "shared", "cores": 2, "task_cpus": 1}"""

  // The tasks and the driver meet here (local mode: one JVM).
  val calls = new AtomicLong(0)
}

class LifecycleSuite extends SparkSuite {
  import LifecycleSuite._

  /** Spark tasks scoring through one handle (TaskPipeline.call, submit + collect) while the driver
    * closes it, 10 times: every call returns its rows, or throws a ConfigException naming the
    * closed handle (then the task stops), or an InferenceException for a job its closed engine
    * dropped; the JVM stays up and every task ends on the "not open" error.
    */
  @Test def closingAModelWhileTasksRunIsSafe(): Unit = {
    val input =
      SparkTest.binaryBatch(Array.fill[Any](8)(Files.readAllBytes(Paths.get(png))))
    val opts = """{"batch_size": 4, "top_k": 1}"""
    for (round <- 0 until 10) {
      val h = NativeRunner.openModel(config(1, shared))
      calls.set(0)
      @volatile var ends: Array[String] = null
      val job = new Thread(() => {
        ends = spark.sparkContext
          .parallelize(0 until 2, 2)
          .mapPartitions { it =>
            val task = it.next().toLong
            var end: String = null
            var i = 0L
            while (end == null) {
              try {
                // Both ways a caller runs a batch: the one-batch helper, and submit + collect.
                if (i % 2 == 0)
                  assertNotNull(TaskPipeline.call(h, TaskPipeline.Score, input, opts, 60000L, None))
                else {
                  val p = NativeBridge.submit(h, 0, input, opts, 9000L + task)
                  var out: Array[Byte] = null
                  while (out == null) out = NativeBridge.collect(p, 100L)
                }
                calls.incrementAndGet()
              } catch {
                case e: ConfigException if e.getMessage.contains(s"model handle $h is not open") =>
                  end = e.getMessage
                case e: InferenceException if e.getMessage.contains("closed") => ()
              }
              i += 1
            }
            Iterator(end)
          }
          .collect()
      })
      job.start()
      val until = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
      while (calls.get < 4 && System.nanoTime() < until) Thread.sleep(1)
      NativeBridge.closeModel(h)
      job.join(60000)
      assertFalse(s"round $round: the tasks did not stop", job.isAlive)
      assertNotNull(s"round $round: the job failed", ends)
      assertEquals(2, ends.length)
      ends.foreach(e => assertTrue(e, e.contains(s"model handle $h is not open: closed")))
      NativeBridge.closeModel(h) // twice: nothing
    }
  }

  /** A pending discarded (a task's completion listener) while another thread collects it: the
    * collect returns its batch or throws naming the pending; never freed memory.
    */
  @Test def discardingAPendingWhileItIsCollectedIsSafe(): Unit = {
    val input =
      SparkTest.binaryBatch(Array.fill[Any](4)(Files.readAllBytes(Paths.get(png))))
    val slow = """{"mode": "shared", "cores": 2, "task_cpus": 1, "debug_delay_ms": 20}"""
    val h = NativeRunner.openModel(config(1, slow))
    try {
      for (round <- 0 until 20) {
        val p = NativeBridge.submit(h, 0, input, "{}", 77L)
        @volatile var outcome: Either[String, Int] = null
        val collector = new Thread(() => {
          outcome =
            try {
              var out: Array[Byte] = null
              while (out == null) out = NativeBridge.collect(p, 50L)
              Right(out.length)
            } catch { case e: ConfigException => Left(e.getMessage) }
        })
        collector.start()
        Thread.sleep(round % 5)
        NativeBridge.discard(p)
        collector.join(30000)
        assertFalse(collector.isAlive)
        outcome match {
          case Right(n)  => assertTrue(n > 0)
          case Left(msg) => assertTrue(msg, msg.contains(s"pending handle $p is not open"))
        }
        NativeBridge.discard(p)
      }
    } finally NativeBridge.closeModel(h)
  }

  /** JVMs that exit while engine workers and task threads are in forward passes and jobs are queued
    * (System.exit runs the shutdown hook's drain; Runtime.halt skips hooks, so the native exit
    * handler drains; a main that returns leaves daemon threads in passes): each exits 0, never on a
    * signal (134 abort, 139 SIGSEGV) and never hangs.
    */
  @Test def jvmExitsCleanlyWithPassesInFlight(): Unit = {
    val javaBin = ProcessHandle.current().info().command().orElse("java")
    val cp = Option(System.getProperty("surefire.test.class.path"))
      .getOrElse(System.getProperty("java.class.path"))
    // This JVM's options (the --add-opens Arrow needs, the libtorch location), less its heap.
    val opts = java.lang.management.ManagementFactory.getRuntimeMXBean.getInputArguments.asScala
      .filterNot(o => o.startsWith("-Xmx") || o.startsWith("-agentlib"))
      .toSeq
    for ((how, seed) <- Seq("exit", "halt", "return").zipWithIndex) {
      val cmd = Seq(javaBin, "-Xmx1g") ++ opts ++
        Seq("-cp", cp, "dev.torchspark.LifecycleMain", resnet, png, how, seed.toString)
      val p = new ProcessBuilder(cmd.asJava).redirectErrorStream(true).start()
      val out = new String(p.getInputStream.readAllBytes())
      if (!p.waitFor(120, TimeUnit.SECONDS)) {
        p.destroyForcibly()
        fail(s"$how: the JVM did not exit within 120 s\n$out")
      }
      assertEquals(s"$how: exit status\n$out", 0, p.exitValue())
      assertTrue(out, out.contains("exiting"))
    }
  }
}

/** A JVM that exits while passes run (LifecycleSuite.jvmExitsCleanlyWithPassesInFlight). Args:
  * model, png, how (exit | halt | return), seed.
  */
object LifecycleMain {
  def main(args: Array[String]): Unit = {
    val Array(model, png, how, seed) = args
    val rng = new scala.util.Random(seed.toLong)
    def config(threads: Int, engine: String): String =
      s"""{"model_path": ${NativeRunner.json(model)}, "num_threads": $threads, "engine": $engine}"""
    val shared = NativeBridge.openModel(config(1, """{"mode": "shared", "cores": 2}"""))
    val perTask = NativeBridge.openModel(config(2, """{"mode": "per-task"}"""))
    val bytes = Files.readAllBytes(Paths.get(png))
    val input = SparkTest.binaryBatch(Array.fill[Any](64)(bytes))
    val opts = """{"batch_size": 32, "top_k": 1}"""
    val loops: Seq[Long => Unit] = Seq(
      _ => TaskPipeline.call(shared, TaskPipeline.Score, input, opts, 600000L, None),
      _ =>
        TaskPipeline.call(
          perTask,
          TaskPipeline.Score,
          input,
          opts,
          600000L,
          None
        ), // the pass runs in submit
      i => NativeBridge.submit(shared, 0, input, opts, i) // queued, never collected
    )
    loops.foreach { body =>
      val t = new Thread(() => { var i = 0L; while (true) { body(i); i += 1 } })
      t.setDaemon(true)
      t.start()
    }
    Thread.sleep(100L + rng.nextInt(400))
    println("exiting")
    System.out.flush()
    how match {
      case "exit" => System.exit(0)
      case "halt" => Runtime.getRuntime.halt(0)
      case _      => () // main returns: DestroyJavaVM, then exit() with the daemons in passes
    }
  }
}
