package dev.torchspark.sql

import scala.collection.mutable

import org.apache.spark.{TaskContext, TaskKilledException}
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
    "waitTime" -> SQLMetrics.createNanoTimingMetric(sparkContext, "native wait time")
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
      val taskId = ctx.map(_.taskAttemptId()).getOrElse(0L)
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
      // Pendings submitted and not yet collected: a failed task drops them (registered after the
      // handles, so it runs before they close: listeners run in reverse order).
      val outstanding = mutable.HashSet.empty[Long]
      ctx.foreach(_.addTaskCompletionListener[Unit] { _ =>
        outstanding.foreach(NativeBridge.discard)
        outstanding.clear()
      })

      /** One call's work on a group: the synchronous answer, or a pending of the engine. */
      final class Running(val rows: Array[InternalRow], val answers: Array[() => Array[Byte]])

      var offset = 0L
      def start(rows: Array[InternalRow]): Running = {
        val answers: Array[() => Array[Byte]] = fns.indices.map { i =>
          val f = fns(i)
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
          val ipc = f.encode(values, argTypes(i), rows.length)
          val options = f.options(rows.length, offset)
          if (f.engine == "shared") {
            val pending = NativeBridge.submit(fnHandles(i), f.op, ipc, options, taskId)
            outstanding += pending
            () => await(f, fnHandles(i), pending)
          } else { () =>
            val t = System.nanoTime()
            try f.nativeCall(fnHandles(i), ipc, options)
            finally waitTime += System.nanoTime() - t
          }
        }.toArray
        offset += rows.length
        new Running(rows, answers)
      }

      def await(f: TorchFunction, h: Long, pending: Long): Array[Byte] = {
        val t0 = System.nanoTime()
        val deadline = t0 + f.timeoutMs * 1000000L
        def drop(): Unit = { outstanding -= pending; NativeBridge.discard(pending) }
        var out: Array[Byte] = null
        try {
          while (out == null) {
            if (ctx.exists(_.isInterrupted())) {
              NativeBridge.cancelTask(h, taskId)
              drop()
              throw new TaskKilledException(s"${f.name}: task cancelled")
            }
            if (System.nanoTime() > deadline) {
              drop()
              throw new InferenceException(
                s"${f.name}: no result from the engine after ${f.timeoutMs} ms (engineTimeoutMs)"
              )
            }
            // collect frees the pending when it returns bytes or throws.
            out =
              try NativeBridge.collect(pending, 50)
              catch { case e: Throwable => outstanding -= pending; throw e }
          }
          outstanding -= pending
          out
        } finally waitTime += System.nanoTime() - t0
      }

      def finish(run: Running): Iterator[InternalRow] = {
        val n = run.rows.length
        val results = fns.indices.map { i =>
          val answer = run.answers(i)()
          forwardTime += ArrowCodec.stageNanos(answer).forward
          fns(i).decode(answer, n)
        }
        batches += fns.size
        numOutputRows += n
        Iterator.tabulate(n) { r =>
          val values = new Array[Any](fns.size)
          var i = 0
          while (i < values.length) { values(i) = toCatalyst(i)(results(i)(r)); i += 1 }
          outProjection(joined(run.rows(r), new GenericInternalRow(values)))
        }
      }

      // Up to two groups in flight: the next one is submitted before the oldest is collected.
      val inFlight = mutable.Queue.empty[Running]
      val groups = input.map(_.copy()).grouped(groupRows).map(_.toArray)
      new Iterator[Iterator[InternalRow]] {
        def hasNext: Boolean = inFlight.nonEmpty || groups.hasNext
        def next(): Iterator[InternalRow] = {
          while (inFlight.size < 2 && groups.hasNext) inFlight.enqueue(start(groups.next()))
          finish(inFlight.dequeue())
        }
      }.flatMap(identity)
    }
  }
}
