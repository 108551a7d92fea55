package dev.torchspark.sql

import scala.collection.mutable

import org.apache.spark.TaskContext
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.Row
import org.apache.spark.sql.catalyst.CatalystTypeConverters
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions._
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan
import org.apache.spark.sql.execution.{SparkPlan, SparkStrategy, UnaryExecNode}
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.torchspark.Compat
import org.apache.spark.sql.vectorized.ColumnarBatch

import dev.torchspark._

/** Plans a [[TorchEval]] as a [[TorchEvalExec]]. */
object TorchEvalStrategy extends SparkStrategy {
  override def apply(plan: LogicalPlan): Seq[SparkPlan] = plan match {
    case TorchEval(calls, attrs, child) => TorchEvalExec(calls, attrs, planLater(child)) :: Nil
    case _                              => Nil
  }
}

/** Runs model calls over each partition a batch of rows at a time: projects the arguments, groups
  * `batchSize` rows (and at most `spark.torchspark.maxBytesPerCall` bytes of each call's arguments:
  * RowGroups), makes one Arrow batch per call (the encoders the transformers use), runs it natively
  * (through the executor's shared engine or a synchronous per-task call, per the function's
  * `engine`) and emits each input row joined with its results, in order.
  *
  * A bad row is never dropped: its result carries the reason in `error` (null for a `_features`
  * call); an argument over the byte bound is such a row error. The `rowsWithErrors` SQL metric
  * counts them, and a partition with any logs one warning with the count and the first reason.
  *
  * With the shared engine, the next batch is submitted before the current one is collected, so
  * encoding and decoding overlap the forward pass.
  */
case class TorchEvalExec(calls: Seq[TorchCall], resultAttrs: Seq[Attribute], child: SparkPlan)
    extends UnaryExecNode {

  override def output: Seq[Attribute] = child.output ++ resultAttrs
  override def producedAttributes: AttributeSet = AttributeSet(resultAttrs)
  override def simpleString(maxFields: Int): String =
    TorchEval.describe(calls, resultAttrs) + ", input=" + inputPath

  /** The input path the node reads: `columnar` or `rows`. */
  def inputPath: String = if (columnar.isDefined) "columnar" else "rows"

  /** The columnar plan the node reads and each call's arguments in it, when the child is a columnar
    * scan Spark turned into rows for this node and every argument can be read from its columns
    * ([[ColumnarInput]]); None: the node reads rows. Decided on the prepared plan (EXPLAIN shows
    * it).
    */
  @transient private[sql] lazy val columnar: Option[(SparkPlan, Seq[Seq[ColumnarInput.Arg]])] =
    if (!conf.getConfString(ColumnarInput.Conf, "true").trim.equalsIgnoreCase("true")) None
    else
      for {
        src <- ColumnarInput.source(child)
        if src.output.map(_.exprId) == child.output.map(_.exprId)
        planned <- ColumnarInput.plan(calls.map(_.children), src.output)
      } yield (src, planned)

  override lazy val metrics: Map[String, SQLMetric] = Map(
    "numOutputRows" -> SQLMetrics.createMetric(sparkContext, "number of output rows"),
    "batches" -> SQLMetrics.createMetric(sparkContext, "number of native batches"),
    "columnarBatches" -> SQLMetrics.createMetric(sparkContext, "columnar input batches read"),
    "rowsWithErrors" -> SQLMetrics.createMetric(sparkContext, "rows with errors"),
    "forwardTime" -> SQLMetrics.createNanoTimingMetric(sparkContext, "forward time"),
    "waitTime" -> SQLMetrics.createNanoTimingMetric(
      sparkContext,
      "model call time (encode, submit, wait)"
    )
  )

  override protected def withNewChildInternal(newChild: SparkPlan): TorchEvalExec =
    copy(child = newChild)

  override protected def doExecute(): RDD[InternalRow] = {
    val (numOutputRows, batches) = (longMetric("numOutputRows"), longMetric("batches"))
    val (forwardTime, waitTime) = (longMetric("forwardTime"), longMetric("waitTime"))
    val rowsWithErrors = longMetric("rowsWithErrors")
    val fns = calls.map(_.fn)
    val args = calls.map(_.children)
    val argTypes = args.map(_.map(_.dataType))
    // What the byte bound's row errors call each argument.
    val argNames = args
      .map(_.map {
        case a: NamedExpression => a.name
        case e                  => e.sql
      }.toIndexedSeq)
      .toIndexedSeq
    val maxBytes = RowGroups.limit(k => Option(conf.getConfString(k, null)))
    val inputSchema = child.output
    val fullOutput = output
    val who = fns.map(_.name).distinct.mkString(", ")
    val columnarInput = columnar.map(_._2)
    val columnarBatches = longMetric("columnarBatches")
    def run(
        input: scala.util.Either[Iterator[InternalRow], Iterator[ColumnarBatch]]
    ): Iterator[InternalRow] = {
      val ctx = Option(TaskContext.get())
      val partition = ctx.map(_.partitionId()).getOrElse(0)
      val argProjections = args.map(a => UnsafeProjection.create(a, inputSchema))
      val toScala = argTypes.map(_.map(t => CatalystTypeConverters.createToScalaConverter(t)))
      val toCatalyst = fns.map(f => CatalystTypeConverters.createToCatalystConverter(f.resultType))
      val outProjection = UnsafeProjection.create(fullOutput, fullOutput)
      val joined = new JoinedRow
      // One handle per model config for the task, closed when it completes.
      val handles = mutable.HashMap.empty[String, Long]
      def handle(f: TorchFunction): Long = {
        val config = f.configJson(NativeRunner.threadsFor(f.numThreads))
        handles.getOrElseUpdate(
          config, {
            val h = NativeRunner.openModel(config)
            ctx.foreach(_.addTaskCompletionListener[Unit](_ => NativeBridge.closeModel(h)))
            h
          }
        )
      }
      val fnHandles = fns.map(handle)
      // The largest batch of the node's functions; 0 asks the engine (what batch_size 0 means).
      val groupRows = fns.indices
        .map { i =>
          if (fns(i).batchSize > 0) fns(i).batchSize else NativeBridge.autoBatchSize(fnHandles(i))
        }
        .max
        .max(1)
      // One pipeline for the node's calls: shared when every call asks for the engine. Its
      // completion listener is registered after the handles', so it runs before they close.
      val shared = fns.forall(_.engine == "shared")
      val pipeline = new TaskPipeline(
        fns.indices.map(i => TaskPipeline.Lane(fnHandles(i), fns(i).preset)),
        shared,
        fns.map(_.timeoutMs).max,
        None,
        ctx
      )
      // This partition's rows with errors, logged once when the task ends.
      var (rowsSeen, errorRows, firstError) = (0L, 0L, null: String)
      ctx.foreach(_.addTaskCompletionListener[Unit] { _ =>
        if (errorRows > 0)
          PartitionErrors.log.warn(
            s"SQL $who: partition $partition: $errorRows of $rowsSeen rows returned " +
              s"an error (in the result's `error`, or null features); the first: $firstError"
          )
      })
      def rowResults(
          input: Iterator[InternalRow]
      ): Iterator[(RowGroup[(InternalRow, Array[Array[Any]])], Array[Array[Byte]])] = {
        // A row with each call's arguments as Scala values (as a Java UDF sees them), converted
        // once: weighed for the byte bound, then encoded.
        def withArgs(row: InternalRow): (InternalRow, Array[Array[Any]]) = {
          val values = Array.tabulate(fns.size) { i =>
            val projected = argProjections(i)(row)
            Array.tabulate[Any](argTypes(i).size) { a =>
              toScala(i)(a)(projected.get(a, argTypes(i)(a)))
            }
          }
          (row.copy(), values)
        }
        val weigh = (r: (InternalRow, Array[Array[Any]]), lane: Int) => {
          val args = r._2(lane)
          var sum = 0L
          var a = 0
          while (a < args.length) { sum += TensorCodec.bytesOf(args(a)); a += 1 }
          sum
        }
        val columns = (r: (InternalRow, Array[Array[Any]]), lane: Int) =>
          r._2(lane).map(v => TensorCodec.bytesOf(v))
        val groups = RowGroups[(InternalRow, Array[Array[Any]])](
          input.map(withArgs),
          groupRows,
          maxBytes,
          argNames,
          weigh,
          columns
        )
        def encode(g: RowGroup[(InternalRow, Array[Array[Any]])], i: Int): Array[Byte] = {
          val n = g.size
          val values = argTypes(i).indices.map(_ => new Array[Any](n))
          var r = 0
          while (r < n) {
            // A row over the byte bound goes as nulls; its row error is set after decoding.
            if (g.over(r, i).isEmpty) {
              val row = g.rows(r)._2(i)
              var a = 0
              while (a < values.size) { values(a)(r) = row(a); a += 1 }
            }
            r += 1
          }
          fns(i).encode(values, argTypes(i), n)
        }
        pipeline.runLanes[RowGroup[(InternalRow, Array[Array[Any]])]](
          groups,
          (g, i) => encode(g, i),
          (g, i) => fns(i).options(g.size, g.first),
          _.size
        )
      }

      // Each group's rows joined with their results, in order; `rowOf` gives a group row's input.
      def emit[R](
          results: Iterator[(RowGroup[R], Array[Array[Byte]])],
          rowOf: R => InternalRow
      ): Iterator[InternalRow] = {
        // The task thread's time in the pipeline: encoding, submitting, and waiting for results.
        val timed = new Iterator[(RowGroup[R], Array[Array[Byte]])] {
          private def clocked[T](body: => T): T = {
            val t = System.nanoTime()
            try body
            finally waitTime += System.nanoTime() - t
          }
          def hasNext: Boolean = clocked(results.hasNext)
          def next(): (RowGroup[R], Array[Array[Byte]]) = clocked(results.next())
        }
        timed.flatMap { case (g, answers) =>
          val n = g.size
          val decoded = fns.indices.map { i =>
            forwardTime += ArrowCodec.stageNanos(answers(i)).forward
            val out = fns(i).decode(answers(i), n)
            g.oversized.keys.foreach { r =>
              g.over(r, i)
                .foreach(o =>
                  out(r) = TorchEvalExec.failed(fns(i), o.message(g.first + r, maxBytes))
                )
            }
            out
          }
          batches += fns.size
          numOutputRows += n
          rowsSeen += n
          var r = 0
          while (r < n) {
            var i = 0
            var bad = false
            while (i < fns.size) {
              val why = TorchEvalExec.errorOf(fns(i), decoded(i)(r))
              if (why != null) {
                bad = true
                if (firstError == null) firstError = why
              }
              i += 1
            }
            if (bad) { errorRows += 1; rowsWithErrors += 1 }
            r += 1
          }
          Iterator.tabulate(n) { r =>
            val values = new Array[Any](fns.size)
            var i = 0
            while (i < values.length) { values(i) = toCatalyst(i)(decoded(i)(r)); i += 1 }
            outProjection(joined(rowOf(g.rows(r)), new GenericInternalRow(values)))
          }
        }
      }

      (input, columnarInput) match {
        case (scala.util.Right(batches), Some(planned)) =>
          val lanes = fns.indices.map(i => planned(i).zip(fns(i).inputNames).toIndexedSeq)
          val groups = ColumnarInput.groups(
            batches,
            lanes,
            argNames,
            UnsafeProjection.create(inputSchema, inputSchema),
            groupRows,
            maxBytes,
            () => columnarBatches += 1
          )
          val results = pipeline.runLanes[ColumnarInput.Group](
            groups,
            (g, i) => g.inputs(i),
            (g, i) => fns(i).options(g.rows.size, g.rows.first),
            _.rows.size
          )
          emit[InternalRow](results.map { case (g, a) => (g.rows, a) }, r => r)
        case (scala.util.Left(rows), _) =>
          emit[(InternalRow, Array[Array[Any]])](rowResults(rows), _._1)
        case (scala.util.Right(_), None) =>
          throw new IllegalStateException("columnar batches without a columnar plan")
      }
    }
    columnar match {
      case Some((src, _)) =>
        Compat.mapPartitionsInternal(src.executeColumnar())(b => run(scala.util.Right(b)))
      case None => Compat.mapPartitionsInternal(child.execute())(rows => run(scala.util.Left(rows)))
    }
  }
}

object TorchEvalExec {

  /** The result of `fn` for a row that fails with `error` (as native row errors come back). */
  private[sql] def failed(fn: TorchFunction, error: String): Any = fn.kind match {
    case g: TorchFunction.General => g.failed(error)
  }

  /** Why `fn`'s result `value` (a Scala value of its result type) is a row error; null when it is
    * not one (per row on the hot path: no Option).
    */
  private[sql] def errorOf(fn: TorchFunction, value: Any): String = fn.kind match {
    case g: TorchFunction.General if g.single =>
      if (value == null) s"${fn.name}: no ${g.outputs.head.name} (a bad row)" else null
    case _ =>
      value match {
        case r: Row if r.length > 0 => r.getString(r.length - 1)
        case _                      => null
      }
  }
}
