package dev.torchspark.sql

import scala.collection.mutable

import org.apache.spark.TaskContext
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.catalyst.CatalystTypeConverters
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions._
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan
import org.apache.spark.sql.execution.{SparkPlan, SparkStrategy, UnaryExecNode}
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.torchspark.Compat

import dev.torchspark._

/** Plans a [[TorchEval]] as a [[TorchEvalExec]]. */
object TorchEvalStrategy extends SparkStrategy {
  override def apply(plan: LogicalPlan): Seq[SparkPlan] = plan match {
    case TorchEval(calls, attrs, child) => TorchEvalExec(calls, attrs, planLater(child)) :: Nil
    case _                              => Nil
  }
}

/** Runs model calls over each partition a batch of rows at a time: projects the arguments, groups
  * `batchSize` rows, makes one Arrow batch per call (the encoders the transformers use), runs it
  * natively (through the executor's shared engine or a synchronous per-task call, per the
  * function's `engine`) and emits each input row joined with its results, in order.
  *
  * With the shared engine, the next batch is submitted before the current one is collected, so
  * encoding and decoding overlap the forward pass.
  */
case class TorchEvalExec(calls: Seq[TorchCall], resultAttrs: Seq[Attribute], child: SparkPlan)
    extends UnaryExecNode {

  override def output: Seq[Attribute] = child.output ++ resultAttrs
  override def producedAttributes: AttributeSet = AttributeSet(resultAttrs)
  override def simpleString(maxFields: Int): String = TorchEval.describe(calls, resultAttrs)

  override lazy val metrics: Map[String, SQLMetric] = Map(
    "numOutputRows" -> SQLMetrics.createMetric(sparkContext, "number of output rows"),
    "batches" -> SQLMetrics.createMetric(sparkContext, "number of native batches"),
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
    val fns = calls.map(_.fn)
    val args = calls.map(_.children)
    val argTypes = args.map(_.map(_.dataType))
    val inputSchema = child.output
    val fullOutput = output
    Compat.mapPartitionsInternal(child.execute()) { input =>
      val ctx = Option(TaskContext.get())
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
        fns.indices.map(i => TaskPipeline.Lane(fnHandles(i), fns(i).op)),
        shared,
        fns.map(_.timeoutMs).max,
        None,
        ctx
      )
      def encode(rows: Array[InternalRow], i: Int): Array[Byte] = {
        val values = argTypes(i).indices.map(_ => new Array[Any](rows.length))
        var r = 0
        while (r < rows.length) {
          val projected = argProjections(i)(rows(r))
          var a = 0
          while (a < values.size) {
            values(a)(r) = toScala(i)(a)(projected.get(a, argTypes(i)(a)))
            a += 1
          }
          r += 1
        }
        fns(i).encode(values, argTypes(i), rows.length)
      }
      // Each group with its first row's position in the partition (named in row errors).
      var offset = 0L
      val groups = input.map(_.copy()).grouped(groupRows).map { g =>
        val rows = g.toArray
        val first = offset
        offset += rows.length
        (rows, first)
      }
      val results = pipeline.runLanes[(Array[InternalRow], Long)](
        groups,
        (g, i) => encode(g._1, i),
        (g, i) => fns(i).options(g._1.length, g._2),
        _._1.length
      )

      // The task thread's time in the pipeline: encoding, submitting, and waiting for results.
      val timed = new Iterator[((Array[InternalRow], Long), Array[Array[Byte]])] {
        private def clocked[T](body: => T): T = {
          val t = System.nanoTime()
          try body
          finally waitTime += System.nanoTime() - t
        }
        def hasNext: Boolean = clocked(results.hasNext)
        def next(): ((Array[InternalRow], Long), Array[Array[Byte]]) = clocked(results.next())
      }
      timed.flatMap { case ((rows, _), answers) =>
        val n = rows.length
        val decoded = fns.indices.map { i =>
          forwardTime += ArrowCodec.stageNanos(answers(i)).forward
          fns(i).decode(answers(i), n)
        }
        batches += fns.size
        numOutputRows += n
        Iterator.tabulate(n) { r =>
          val values = new Array[Any](fns.size)
          var i = 0
          while (i < values.length) { values(i) = toCatalyst(i)(decoded(i)(r)); i += 1 }
          outProjection(joined(rows(r), new GenericInternalRow(values)))
        }
      }
    }
  }
}
