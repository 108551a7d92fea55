package dev.torchspark

import java.nio.charset.StandardCharsets
import java.nio.file.{Files, Paths, StandardCopyOption}

import scala.util.control.NonFatal

import com.fasterxml.jackson.databind.ObjectMapper
import org.apache.spark.SparkEnv
import org.apache.spark.ml.linalg.{SQLDataTypes, Vector}
import org.apache.spark.sql.SparkSession

/** One executor's answer to the doctor: where it runs, what its CPU has, where libtorch came from,
  * and whether the library loads and a tiny bundled model scores the expected numbers.
  */
final case class DoctorRow(
    host: String,
    executor: String,
    libtorch: String,
    isa: String,
    bf16: String,
    glibc: String,
    ok: Boolean,
    status: String,
    engine: String = ""
) {
  def toJson: String = {
    val m = new java.util.LinkedHashMap[String, Any]()
    m.put("side", "jvm"); m.put("host", host); m.put("executor", executor)
    m.put("libtorch", libtorch); m.put("isa", isa); m.put("bf16", bf16); m.put("glibc", glibc)
    m.put("ok", ok); m.put("status", status)
    m.put("engine", engine)
    new ObjectMapper().writeValueAsString(m)
  }
}

/** The node check of `python -m torchspark.node check`, inside an executor JVM. */
object Doctor {

  /** This JVM's answer, computed once (later tasks on the same executor reuse it). */
  lazy val local: DoctorRow = run()

  def cpuFlags(): Set[String] =
    try {
      val text = new String(Files.readAllBytes(Paths.get("/proc/cpuinfo")), StandardCharsets.UTF_8)
      text
        .split("\n")
        .find(_.startsWith("flags"))
        .map(_.split(":", 2)(1).trim.split("\\s+").toSet)
        .getOrElse(Set.empty)
    } catch { case NonFatal(_) => Set.empty }

  def isaSummary(flags: Set[String]): (String, String) = {
    val isa = Seq(
      "avx2",
      "fma",
      "avx512f",
      "avx512_vnni",
      "avx512_bf16",
      "amx_tile",
      "amx_bf16",
      "amx_int8"
    ).filter(flags.contains)
    val bf16 =
      if (flags.contains("amx_bf16")) "native (AMX)"
      else if (flags.contains("avx512_bf16")) "native (avx512_bf16)"
      else "emulated (slow: use fp32)"
    (if (isa.isEmpty) "none of avx2/avx512" else isa.mkString(" "), bf16)
  }

  private def run(): DoctorRow = {
    val host = NativeLoader.hostName()
    val executor = Option(SparkEnv.get).map(_.executorId).getOrElse("none")
    val (isa, bf16) = isaSummary(cpuFlags())
    val glibc =
      s"node has ${NativeLoader.nodeGlibc()}; torchspark needs ${NativeLoader.glibcNeeded()}"
    def row(ok: Boolean, status: String, engine: String = "") =
      DoctorRow(host, executor, NativeLoader.libtorchSource(), isa, bf16, glibc, ok, status, engine)
    try {
      NativeBridge.loadCount() // loads the library, or throws the kept failure
      val (diff, engine) = scoreTiny()
      if (diff < 1e-4) row(ok = true, f"loaded; tiny model max |diff| vs PyTorch $diff%.1e", engine)
      else row(ok = false, f"loaded, but the tiny model is off by $diff%.1e", engine)
    } catch {
      case NonFatal(e)     => row(ok = false, String.valueOf(e.getMessage))
      case e: LinkageError => row(ok = false, e.toString)
    }
  }

  /** "engine: MODE, W workers x T threads (cores C, task cpus c)" from an engine's stats JSON. */
  def engineLine(statsJson: String, taskCpus: Int): String = {
    val s = new ObjectMapper().readTree(statsJson)
    def int(k: String) = Option(s.get(k)).map(_.asLong).getOrElse(0L)
    val mode = Option(s.get("mode")).map(_.asText).getOrElse("?")
    s"engine: $mode, ${int("workers")} workers x ${int("threads_per_worker")} threads " +
      s"(cores ${int("cores")}, task cpus $taskCpus)"
  }

  /** Scores the bundled 8×8 PNG with the bundled tiny model; max |diff| to PyTorch's numbers, and
    * the [[engineLine]] of the engine a transformer with default params gets on this executor.
    */
  private def scoreTiny(): (Double, String) = {
    val dir = Files.createTempDirectory("torchspark-doctor")
    try {
      Seq("tiny.pt", "tiny.json", "tiny.png", "tiny.expected.json").foreach { f =>
        val in = getClass.getResourceAsStream(s"/torchspark/data/$f")
        if (in == null) throw new IllegalStateException(s"$f is not in the jar")
        try Files.copy(in, dir.resolve(f), StandardCopyOption.REPLACE_EXISTING)
        finally in.close()
      }
      val png = Files.readAllBytes(dir.resolve("tiny.png"))
      val expected = new ObjectMapper().readTree(dir.resolve("tiny.expected.json").toFile)
      val want = (0 until expected.get("probability").get(0).size)
        .map(i => expected.get("probability").get(0).get(i).asDouble)
      val config = NativeRunner.configJson(dir.resolve("tiny.pt").toString, "cpu", 1, "fp32")
      val h = NativeBridge.openModel(config)
      try {
        val input = TensorCodec.encode(
          Seq(TensorCodec.Column("image", org.apache.spark.sql.types.BinaryType, Array[Any](png))),
          1
        )
        val ctx = Option(org.apache.spark.TaskContext.get())
        val answer = TaskPipeline.call(
          h,
          TaskPipeline.Score,
          input,
          """{"outputs": ["probability"]}""",
          EngineSettings.default.timeoutMs,
          ctx
        )
        val probability = TensorCodec.decode(answer, Seq(SQLDataTypes.VectorType))(0) match {
          case Right(Seq(p: Vector)) => p.toArray
          case Right(other)          => throw new IllegalStateException(s"tiny model: $other")
          case Left(error)           => throw new IllegalStateException(s"tiny model: $error")
        }
        val diff = probability.zip(want).map { case (a, b) => math.abs(a - b) }.max
        (diff, engineLine(NativeBridge.engineStats(h), ExecutorCores.taskCpus))
      } finally NativeBridge.closeModel(h)
    } finally {
      Option(dir.toFile.listFiles()).foreach(_.foreach(_.delete()))
      dir.toFile.delete()
      ()
    }
  }

  /** Runs the check on the executors with `tasks` tiny tasks and keeps one row per executor. */
  def rows(spark: SparkSession, tasks: Int): Seq[DoctorRow] = {
    val sc = spark.sparkContext
    sc.parallelize(0 until tasks, tasks)
      .mapPartitions(_ => Iterator(local))
      .collect()
      .groupBy(r => (r.host, r.executor))
      .values
      .map(_.head)
      .toSeq
      .sortBy(r => (r.host, r.executor))
  }

  def table(rows: Seq[DoctorRow]): String = {
    val cols = Seq("host", "executor", "libtorch", "isa", "bf16", "status", "engine")
    val cells = rows.map(r =>
      Seq(r.host, r.executor, r.libtorch, r.isa, r.bf16, r.status, r.engine).map(_.take(80))
    )
    val widths = cols.indices.map(i => (cols(i) +: cells.map(_(i))).map(_.length).max)
    def line(xs: Seq[String]) = xs.zip(widths).map { case (x, w) => x.padTo(w, ' ') }.mkString("  ")
    (line(cols) +: line(widths.map("-" * _)) +: cells.map(line)).mkString("\n")
  }
}
