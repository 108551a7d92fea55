package dev.torchspark.sql

import java.util.concurrent.ConcurrentHashMap

import org.apache.spark.TaskContext
import org.apache.spark.ml.linalg.SQLDataTypes
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
  *   what the function runs and returns ([[TorchFunction.General]]: a preset of the spec's outputs,
  *   one argument per data input): a general model's outputs or an image classifier's scores
  *   (struct<one field per output, error>), or an image classifier's features alone
  *   (`name_features`, null for a bad row)
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

  private def call: General = kind match {
    case g: General => g
  }

  /** The Spark type of the result: the outputs, their aliases and `error` as a struct; or the one
    * output of a [[General.single]] call.
    */
  def resultType: DataType = call.resultType

  /** How many arguments a call takes: one per data input of the spec. */
  def arity: Int = call.inputs.size

  /** The names of the call's inputs, in argument order: its Arrow input's fields. */
  def inputNames: Seq[String] = call.inputs.map(_.name)

  /** The preset the native call runs. */
  def preset: String = call.preset

  /** The native options of a call of `rows` rows, the first being row `offset` of the partition
    * (the row number an error names).
    */
  def options(rows: Int, offset: Long): String = {
    val columns = call.inputs
      .map(d => s"${NativeRunner.json(d.name)}: [${NativeRunner.json(d.name)}]")
      .mkString("{", ", ", "}")
    s"""{"batch_size": ${math.max(1, rows)}, "row_offset": $offset, "columns": $columns""" +
      s"""${call.options}}"""
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
  def checkArgument(i: Int, dt: DataType): Option[String] = {
    val d = call.inputs(i)
    if (dt == NullType) None
    else if (d.isImage && !TensorCodec.isImageColumn(dt))
      Some(
        s"$name: input `${d.name}` (image): argument of type ${dt.simpleString}; an image " +
          s"reads ${TensorCodec.imageColumns}"
      )
    else TensorCodec.unsupported(dt).map(why => s"$name: input `${d.name}`: argument $why")
  }

  /** Arrow IPC bytes of `n` rows: `args(i)` holds argument i's Scala values (as a Java UDF sees
    * them), `types(i)` its Spark type.
    */
  def encode(args: Seq[Array[Any]], types: Seq[DataType], n: Int): Array[Byte] = {
    val cols = call.inputs.indices.map { i =>
      val d = call.inputs(i)
      val dt = if (types(i) == NullType) nullType(d) else types(i)
      TensorCodec.Column(d.name, dt, args(i))
    }
    TensorCodec.encode(cols, n)
  }

  /** The per-row results (Scala values of [[resultType]]) of a native answer for `n` rows. */
  def decode(bytes: Array[Byte], n: Int): Array[Any] = {
    val out = TensorCodec.decode(bytes, call.outputs.map(_.dataType)).map {
      case Right(outputs) => call.result(outputs)
      case Left(error)    => call.failed(error)
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
      h => TaskPipeline.call(h, preset, input, options(1, 0), timeoutMs, ctx)
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

  /** What a registered function runs and returns. */
  sealed trait Kind extends Serializable

  /** A model call: the `preset` of the spec's outputs (`predict` for a general model, `score` and
    * `featurize` for an image classifier), its data inputs in argument order, and the Spark fields
    * of its result (each output read as its field's type).
    *
    * @param aliases
    *   (alias, output): struct fields that repeat an output under an old name (for one release)
    * @param single
    *   the result is the one output itself, null for a bad row (`name_features`), not a struct
    * @param options
    *   batch options after the columns' (`, "top_k": 5`)
    */
  final case class General(
      inputs: Seq[InputDecl],
      outputs: Seq[StructField],
      preset: String = TaskPipeline.Predict,
      aliases: Seq[(String, String)] = Nil,
      single: Boolean = false,
      options: String = ""
  ) extends Kind {
    require(!single || outputs.size == 1, s"a single result is one output, not $outputs")

    private val aliased = aliases.map { case (alias, of) => outputs.indexWhere(_.name == of) }

    def resultType: DataType =
      if (single) outputs.head.dataType
      else
        StructType(
          outputs ++
            aliases.zip(aliased).map { case ((alias, _), i) => outputs(i).copy(name = alias) } :+
            StructField("error", StringType)
        )

    /** A row's result from its outputs. */
    def result(values: Seq[Any]): Any =
      if (single) values.head
      else Row.fromSeq((values ++ aliased.map(values(_))) :+ null)

    /** The result of a row that fails with `error` (as native row errors come back). */
    def failed(error: String): Any =
      if (single) null else Row.fromSeq(Seq.fill[Any](outputs.size + aliases.size)(null) :+ error)
  }

  /** A version-1 spec as the describe gives any (every one lowers to the same inputs and outputs):
    * for the score struct's type without a model at hand.
    */
  private val anyImageSpec =
    """{"input": {"height": 1, "width": 1}, "output": "logits", "featurize": {"output_index": 0}}"""

  /** An image classifier's `name(image)`: the `score` preset (`describePreset(spec, "score")`) as
    * struct<prediction double, probability array<float>, predicted_label string, top_k
    * array<struct<index int, label string, probability double>>, label string (the alias of
    * predicted_label, for one release), error string>; top_k holds the best 5.
    */
  def imageScore(model: ModelSchema): General = General(
    model.dataInputs,
    model.outputs.map { f =>
      f.dataType match {
        case d if d == SQLDataTypes.VectorType =>
          f.copy(dataType = ArrayType(FloatType, containsNull = false))
        case ArrayType(s: StructType, n) =>
          f.copy(dataType = ModelSchema.withDoubles(ArrayType(s, n)))
        case _ => f
      }
    },
    TaskPipeline.Score,
    aliases = Seq("label" -> "predicted_label"),
    options = """, "top_k": 5"""
  )

  /** An image classifier's `name_features(image)`: the `featurize` preset's one output as
    * array<double>, null for a bad row.
    */
  def imageFeatures(model: ModelSchema): General = General(
    model.dataInputs,
    model.outputs.map(_.copy(dataType = ArrayType(DoubleType, containsNull = false))),
    TaskPipeline.Featurize,
    single = true
  )

  /** [[imageScore]] of any version-1 spec. */
  lazy val ImageScore: General = imageScore(ModelSchema.of(anyImageSpec, TaskPipeline.Score))

  /** [[imageFeatures]] of any version-1 spec with a `featurize` entry. */
  lazy val ImageFeatures: General =
    imageFeatures(ModelSchema.of(anyImageSpec, TaskPipeline.Featurize))

  /** A null argument's type: what the input's reader expects, so that it reports the null. */
  private[torchspark] def nullType(d: InputDecl): DataType =
    if (d.isImage) BinaryType
    else if (d.isText) StringType
    else if (d.shape.isEmpty) DoubleType
    else ArrayType(DoubleType)
}
