package dev.torchspark.sql

import java.util.concurrent.ConcurrentHashMap

import org.apache.spark.TaskContext
import org.apache.spark.sql.Row
import org.apache.spark.sql.types._

import dev.torchspark._

/** A model registered as a SQL function: what one call of it runs, row by row ([[evalRow]], the
  * fallback) or a batch of rows at a time ([[encode]] / [[decode]], in [[TorchEvalExec]]).
  *
  * Two functions are equal when they name the same function of the same model path, so that two
  * calls of `m(c)` in one query dedup into one pass whatever object registered them.
  *
  * @param kind
  *   what the function returns: the image scores (`name`, struct<prediction, label, probability,
  *   error>), the image features (`name_features`, array<double>, null for a bad row) or a general
  *   model's outputs (struct<one field per output, error>)
  * @param batchSize
  *   rows per native call in [[TorchEvalExec]] (the transformers' default, 64); 0 = the engine's
  *   choice (`NativeBridge.autoBatchSize`)
  * @param engine
  *   "shared" (the executor's one engine) or "per-task" (each task runs its passes inline, inside
  *   `submit`); both go through submit + collect
  */
final class TorchFunction(
    val name: String,
    val source: ModelSource,
    val device: String,
    val numThreads: Int,
    val kind: TorchFunction.Kind,
    val batchSize: Int,
    val engine: String,
    val timeoutMs: Long
) extends Serializable {
  import TorchFunction._

  require(batchSize >= 0, s"$name: batch size must be >= 0 (0: auto), got $batchSize")
  require(
    engine == "shared" || engine == "per-task",
    s"$name: engine must be shared or per-task, got $engine"
  )

  /** The Spark type of the result (unchanged from the row-by-row UDFs). */
  def resultType: DataType = kind match {
    case ImageScore    => TorchSpark.scoreType
    case ImageFeatures => ArrayType(DoubleType, containsNull = false)
    case g: General    => StructType(g.outputs :+ StructField("error", StringType))
  }

  /** How many arguments a call takes: one image, or one per data input of the spec. */
  def arity: Int = kind match {
    case g: General => g.inputs.size
    case _          => 1
  }

  /** The engine's op code (NativeBridge.submit): 0 score, 1 featurize, 2 predict. */
  def op: Int = kind match {
    case ImageScore    => 0
    case ImageFeatures => 1
    case _: General    => 2
  }

  /** The native options of a call of `rows` rows, the first being row `offset` of the partition
    * (the row number an error names).
    */
  def options(rows: Int, offset: Long): String = {
    val extra = kind match {
      case g: General =>
        val columns = g.inputs
          .map(d => s"${NativeRunner.json(d.name)}: [${NativeRunner.json(d.name)}]")
          .mkString("{", ", ", "}")
        s""", "columns": $columns"""
      case _ => """, "top_k": 1"""
    }
    s"""{"batch_size": ${math.max(1, rows)}, "row_offset": $offset$extra}"""
  }

  /** The native ModelConfig JSON, with this function's engine mode and timeout (the engine sized
    * from the executor as the transformers' is).
    */
  def configJson(threads: Int): String =
    NativeRunner.configJson(
      source,
      device,
      threads,
      "fp32",
      EngineSettings(engine, timeoutMs, numThreads)
    )

  /** A message when an argument of Spark type `dt` cannot be sent as argument `i`, else None. */
  def checkArgument(i: Int, dt: DataType): Option[String] = kind match {
    case g: General =>
      val d = g.inputs(i)
      if (dt == NullType) None
      else TensorCodec.unsupported(dt).map(why => s"$name: input `${d.name}`: argument $why")
    case _ =>
      if (dt == NullType) None
      else
        scala.util.Try(ImageColumn.of(s"argument of $name", dt)).failed.toOption.map(_.getMessage)
  }

  /** Arrow IPC bytes of `n` rows: `args(i)` holds argument i's Scala values (as a Java UDF sees
    * them), `types(i)` its Spark type.
    */
  def encode(args: Seq[Array[Any]], types: Seq[DataType], n: Int): Array[Byte] = kind match {
    case g: General =>
      val cols = g.inputs.indices.map { i =>
        val d = g.inputs(i)
        val dt = if (types(i) == NullType) nullType(d) else types(i)
        TensorCodec.Column(d.name, dt, args(i))
      }
      TensorCodec.encode(cols, n)
    case _ =>
      val kind =
        if (types.head == NullType) ImageColumn.Binary else ImageColumn.of(name, types.head)
      ArrowCodec.encode(kind, args.head)
  }

  /** The per-row results (Scala values of [[resultType]]) of a native answer for `n` rows. */
  def decode(bytes: Array[Byte], n: Int): Array[Any] = {
    val out: Array[Any] = kind match {
      case ImageScore =>
        ArrowCodec.decodeScores(bytes).map { s =>
          val r: Any =
            if (s.error != null) Row(null, null, null, s.error)
            else Row(s.prediction, s.label, s.probability.toSeq, null)
          r
        }
      case ImageFeatures =>
        ArrowCodec.decodeFeatures(bytes).map { case (f, _) =>
          val r: Any = if (f == null) null else f.toSeq
          r
        }
      case g: General =>
        val count = g.outputs.size
        TensorCodec.decode(bytes, count).map {
          case Right(outputs) => Row.fromSeq(outputs :+ null): Any
          case Left(error)    => Row.fromSeq(Seq.fill[Any](count)(null) :+ error): Any
        }
    }
    if (out.length != n)
      throw new InferenceException(s"$name: native code returned ${out.length} rows for $n")
    out
  }

  /** One row (the fallback where [[ExtractTorchCalls]] cannot reach): `args` are the Scala values
    * of the arguments, `types` their Spark types, encoded as a batch of one and run by the one call
    * protocol (submit + collect, [[TaskPipeline.call]]) through this function's engine.
    */
  def evalRow(args: Seq[Any], types: Seq[DataType]): Any = {
    val input = encode(args.map(v => Array[Any](v)), types, 1)
    val ctx = Option(TaskContext.get())
    val answer = TorchFunction.withRowHandle(configJson(NativeRunner.threadsFor(numThreads)), ctx) {
      h => TaskPipeline.call(h, op, input, options(1, 0), timeoutMs, ctx)
    }
    decode(answer, 1)(0)
  }

  override def equals(other: Any): Boolean = other match {
    case f: TorchFunction => f.source.path == source.path && f.name == name
    case _                => false
  }

  override def hashCode: Int = (source.path, name).hashCode

  override def toString: String = name
}

object TorchFunction {

  // The row fallback runs from any task thread: each task opens a handle per model config once
  // (resolving, and fetching, a remote model as the node does) and closes it when it completes,
  // as the transformers' tasks do; so a model file changed on disk is what the next task scores
  // with (docs/model-cache.md).
  private val rowHandles = new ConcurrentHashMap[(String, Long), java.lang.Long]()

  /** `body` with the task's handle of `config` (opened on first use, closed with the task); outside
    * a task (e.g. on the driver) a handle for this call alone.
    */
  private def withRowHandle[T](config: String, ctx: Option[TaskContext])(body: Long => T): T =
    ctx match {
      case Some(c) =>
        val key = (config, c.taskAttemptId())
        var opened = false
        val handle = rowHandles.computeIfAbsent(
          key,
          _ => { opened = true; java.lang.Long.valueOf(NativeRunner.openModel(config)) }
        )
        // Outside computeIfAbsent: a listener may run at once, and it updates the same map.
        if (opened) c.addTaskCompletionListener[Unit] { _ =>
          Option(rowHandles.remove(key)).foreach(h => NativeBridge.closeModel(h))
        }
        body(handle)
      case None =>
        val h = NativeRunner.openModel(config)
        try body(h)
        finally NativeBridge.closeModel(h)
    }

  /** What a registered function returns. */
  sealed trait Kind extends Serializable
  case object ImageScore extends Kind
  case object ImageFeatures extends Kind

  /** A general model (a version-2 spec): its data inputs in argument order, its outputs. */
  final case class General(inputs: Seq[InputDecl], outputs: Seq[StructField]) extends Kind

  /** A null argument's type: what the input's reader expects, so that it reports the null. */
  private[torchspark] def nullType(d: InputDecl): DataType =
    if (d.isImage) BinaryType
    else if (d.isText) StringType
    else if (d.shape.isEmpty) DoubleType
    else ArrayType(DoubleType)
}
