package dev.torchspark

import java.util.concurrent.atomic.AtomicLong

import org.apache.spark.{TaskContext, TaskKilledException}

/** Runs one task's groups of rows through a model handle, in order (docs/design/shared-engine.md
  * §2), by the one call protocol: `submit` a group (reading, decoding and assembling its rows on
  * the task thread), then `collect` its result.
  *
  * Shared engine (`shared = true`): double-buffering of depth 2 on the task thread. It encodes
  * group k+1 and `submit`s it, and only then `collect`s group k, whose forward ran on an engine
  * worker meanwhile; no second JVM thread reads Spark's iterator.
  *
  * Per-task (`shared = false`): depth 1, no overlap. The handle's engine runs each forward pass
  * inline inside `submit` (engine mode `per-task`), so `collect` finds the result ready: the
  * reference the shared engine must equal.
  *
  * `collect` waits in slices of 100 ms: between slices a killed task (`TaskContext.isInterrupted`)
  * discards its pendings, cancels its queued work and throws
  * [[org.apache.spark.TaskKilledException]]; a wait longer than `timeoutMs` throws an
  * [[InferenceException]] naming the partition, the rows and the engine's state.
  *
  * A task completion listener (success, failure or kill) discards what is still pending and cancels
  * the task's queued work; it is registered after the handle's own `closeModel` listener, and Spark
  * runs completion listeners in reverse order, so it runs first.
  *
  * @param lanes
  *   the model calls each group goes through: an open handle (NativeBridge.openModel) and its
  *   preset (score, featurize, predict, embed: the outputs the call selects); one for a
  *   transformer, one per distinct call for a SQL node
  * @param clock
  *   where the time goes: encode into `bridge`, submit and collect into `native`, the time blocked
  *   in collect also into `blocked`; None to not measure
  */
private[torchspark] final class TaskPipeline(
    lanes: Seq[TaskPipeline.Lane],
    shared: Boolean,
    timeoutMs: Long,
    clock: Option[StageClock],
    ctx: Option[TaskContext]
) {
  lanes.foreach { l =>
    require(
      TaskPipeline.presets.contains(l.preset),
      s"preset `${l.preset}`: expected one of ${TaskPipeline.presets.mkString(", ")}"
    )
  }
  require(lanes.nonEmpty, "a pipeline needs at least one model call")

  /** One model handle and preset: what the transformers run. */
  def this(
      handle: Long,
      preset: String,
      shared: Boolean,
      timeoutMs: Long,
      clock: Option[StageClock] = None,
      ctx: Option[TaskContext] = Option(TaskContext.get())
  ) = this(Seq(TaskPipeline.Lane(handle, preset)), shared, timeoutMs, clock, ctx)

  /** The id the engine knows this task's jobs by: Spark's task attempt id, or a fresh one outside a
    * task (negative, so it never meets a task attempt id).
    */
  val taskId: Long = TaskPipeline.taskIdOf(ctx)

  private val partition = ctx.map(_.partitionId()).getOrElse(0)

  /** Groups submitted ahead of the one being collected: 2 with the shared engine (the next group is
    * read and decoded while the engine runs the current one), 1 per task (the pass ran in submit).
    */
  private val depth = if (shared) 2 else 1

  // Submitted and not yet collected, oldest first (at most `depth` groups' lanes). Guarded by
  // itself: the completion listener may run while the task thread is still in a collect slice.
  private val pending = new java.util.ArrayDeque[java.lang.Long]()
  private var closed = false

  ctx.foreach(_.addTaskCompletionListener[Unit](_ => close()))

  /** The groups' native results (Arrow IPC bytes), in the groups' order. `encode` turns a group
    * into the Arrow IPC input, `options` gives its options JSON, `rows` its row count (named in
    * errors; -1 if unknown). Lazy: a group is read, encoded and submitted as the result before it
    * is consumed.
    */
  def run[G](
      groups: Iterator[G],
      encode: G => Array[Byte],
      options: G => String,
      rows: G => Int = TaskPipeline.unknownRows
  ): Iterator[(G, Array[Byte])] =
    runLanes[G](groups, (g, _) => encode(g), (g, _) => options(g), rows).map { case (g, out) =>
      (g, out(0))
    }

  /** As [[run]] for several model calls per group (a SQL node's calls): `encode(g, lane)` and
    * `options(g, lane)` give lane `lane`'s input; the results come back per lane, in lane order.
    */
  def runLanes[G](
      groups: Iterator[G],
      encode: (G, Int) => Array[Byte],
      options: (G, Int) => String,
      rows: G => Int = TaskPipeline.unknownRows
  ): Iterator[(G, Array[Array[Byte]])] = new Iterator[(G, Array[Array[Byte]])] {
    private val waiting = new java.util.ArrayDeque[G]()

    private def fill(): Unit =
      while (waiting.size < depth && groups.hasNext) {
        checkKilled()
        val g = groups.next()
        lanes.indices.foreach { i =>
          val t0 = System.nanoTime()
          val input = encode(g, i)
          val t1 = System.nanoTime()
          val p =
            try TaskPipeline.submit(lanes(i), input, options(g, i), taskId)
            finally clock.foreach { c => c.bridge += t1 - t0; c.native += System.nanoTime() - t1 }
          pending.synchronized {
            if (closed) { NativeBridge.discard(p); throw killed() }
            pending.addLast(p)
          }
        }
        waiting.addLast(g)
      }

    def hasNext: Boolean = failing { fill(); !waiting.isEmpty }

    def next(): (G, Array[Array[Byte]]) = failing {
      fill()
      if (waiting.isEmpty) throw new NoSuchElementException("no more groups")
      val g = waiting.pollFirst()
      (g, lanes.indices.map(_ => await(rows(g))).toArray)
    }
  }

  /** `body`; when it throws, the pendings and queued work go first (also outside a task, where no
    * completion listener would).
    */
  private def failing[T](body: => T): T =
    try body
    catch { case e: Throwable => close(); throw e }

  /** The oldest pending's result; its pending is freed (by collect) when this returns or throws. */
  private def await(groupRows: Int): Array[Byte] = {
    val p: Long = pending.synchronized(pending.peekFirst())
    val start = System.nanoTime()
    val out =
      try
        TaskPipeline.collect(
          p,
          timeoutMs,
          () => checkKilled(),
          () => {
            val stats = TaskPipeline.engineStats(lanes.map(_.handle))
            close()
            new InferenceException(
              s"torchspark: partition $partition: no result for ${describe(groupRows)} after " +
                s"engineTimeoutMs=$timeoutMs ms (engine: $stats); raise engineTimeoutMs or " +
                "lower batchSize"
            )
          }
        )
      catch {
        // collect freed `p` when it threw; the others go with the task.
        case e: TorchSparkException =>
          pending.synchronized(pending.remove(java.lang.Long.valueOf(p)))
          close()
          throw e
      } finally
        clock.foreach { c =>
          val blocked = System.nanoTime() - start
          c.native += blocked
          c.blocked += blocked
        }
    pending.synchronized(pending.remove(java.lang.Long.valueOf(p)))
    out
  }

  private def describe(groupRows: Int): String =
    if (groupRows >= 0) s"a batch of $groupRows rows" else "a batch"

  private def killed(): TaskKilledException = TaskPipeline.killed(partition, taskId)

  /** A killed task stops here: its pendings and queued work go, then TaskKilledException. */
  private def checkKilled(): Unit =
    if (ctx.exists(_.isInterrupted())) {
      close()
      throw killed()
    }

  /** Discards every pending and drops the task's queued work (idempotent). */
  def close(): Unit = pending.synchronized {
    val had = !closed
    closed = true
    while (!pending.isEmpty) NativeBridge.discard(pending.pollFirst())
    if (had && shared) lanes.foreach(l => NativeBridge.cancelTask(l.handle, taskId))
    ()
  }
}

private[torchspark] object TaskPipeline {

  /** A model handle and the preset run through it. */
  final case class Lane(handle: Long, preset: String)

  /** The presets (docs/internals.md, the call protocol), in the order of `submit`'s op codes. */
  val Score = "score"
  val Featurize = "featurize"
  val Predict = "predict"
  val Embed = "embed"
  val presets: Seq[String] = Seq(Score, Featurize, Predict, Embed)

  /** `submit`'s op code for `preset` (0 score, 1 featurize, 2 the rest): kept for the native side's
    * compatibility; the options' `preset` names the selection and wins over it.
    */
  def opOf(preset: String): Int = preset match {
    case Score     => 0
    case Featurize => 1
    case _         => 2
  }

  /** `options` (a JSON object) with `"preset"` first. */
  def withPreset(options: String, preset: String): String = {
    val body = options.trim
    require(body.startsWith("{") && body.endsWith("}"), s"options must be a JSON object: $options")
    val rest = body.substring(1).trim
    s"""{"preset": ${NativeRunner.json(preset)}${if (rest == "}") "}" else ", " + rest}"""
  }

  /** NativeBridge.submit of `input` through `lane`: its op code, the preset in the options. */
  def submit(lane: Lane, input: Array[Byte], options: String, taskId: Long): Long =
    NativeBridge.submit(
      lane.handle,
      opOf(lane.preset),
      input,
      withPreset(options, lane.preset),
      taskId
    )

  /** The longest single collect: how soon a killed task notices. */
  val sliceMs = 100L

  val unknownRows: Any => Int = _ => -1

  private val localIds = new AtomicLong(0L)

  /** Spark's task attempt id, or a fresh negative id outside a task. */
  def taskIdOf(ctx: Option[TaskContext]): Long =
    ctx.map(_.taskAttemptId()).getOrElse(localIds.decrementAndGet())

  private def killed(partition: Int, taskId: Long): TaskKilledException =
    new TaskKilledException(s"torchspark: partition $partition: task $taskId was killed")

  /** The engines' states for a timeout's message. */
  private def engineStats(handles: Seq[Long]): String =
    handles
      .map { h =>
        try NativeBridge.engineStats(h)
        catch { case e: TorchSparkException => s"unknown: ${e.getMessage}" }
      }
      .mkString("; ")

  /** `NativeBridge.collect(p)` in slices of [[sliceMs]] until it returns bytes: between slices
    * `checkKilled` may throw; after `timeoutMs` the exception `timedOut` makes is thrown (`p` is
    * still live then: the caller discards it). `p` is freed when this returns bytes or collect
    * throws.
    */
  private def collect(
      p: Long,
      timeoutMs: Long,
      checkKilled: () => Unit,
      timedOut: () => Throwable
  ): Array[Byte] = {
    val deadline = System.nanoTime() + timeoutMs * 1000000L
    var out: Array[Byte] = null
    while (out == null) {
      val left = (deadline - System.nanoTime()) / 1000000L
      out = NativeBridge.collect(p, math.max(1L, math.min(sliceMs, left)))
      if (out == null) {
        checkKilled()
        if (System.nanoTime() >= deadline) throw timedOut()
      }
    }
    out
  }

  /** One batch through `submit` + `collect`, for a caller with one batch at a time rather than a
    * stream of groups (the SQL row fallback, the doctor): the protocol of the pipeline, depth 1,
    * with the same kill checks and bound. The pending is freed however this ends; after a kill or a
    * timeout the task's queued work on `handle` is dropped too.
    */
  def call(
      handle: Long,
      preset: String,
      input: Array[Byte],
      options: String,
      timeoutMs: Long,
      ctx: Option[TaskContext]
  ): Array[Byte] = {
    val taskId = taskIdOf(ctx)
    val partition = ctx.map(_.partitionId()).getOrElse(0)
    val p = submit(Lane(handle, preset), input, options, taskId)
    // Bytes or a native error: collect freed `p`. Otherwise (killed, timed out) it is ours.
    var freed = false
    var expired = false
    try {
      val out = collect(
        p,
        timeoutMs,
        () => if (ctx.exists(_.isInterrupted())) throw killed(partition, taskId),
        () => {
          expired = true
          new InferenceException(
            s"torchspark: partition $partition: no result for a batch after $timeoutMs ms " +
              s"(engine: ${engineStats(Seq(handle))})"
          )
        }
      )
      freed = true
      out
    } catch {
      case e: TorchSparkException if !expired => freed = true; throw e
    } finally
      if (!freed) {
        NativeBridge.discard(p)
        // A closed handle must not hide why the call ended (killed, timed out).
        try NativeBridge.cancelTask(handle, taskId)
        catch { case _: TorchSparkException => () }
      }
  }
}

/** A row of a group whose inputs for one native call (a lane) are over the byte bound: it is sent
  * as nulls and becomes a row error (see [[RowGroups]]).
  *
  * @param column
  *   the largest of the lane's columns in this row, and `bytes` its size
  * @param laneBytes
  *   all the lane's columns in this row
  */
private[torchspark] final case class Oversized(
    lane: Int,
    column: String,
    bytes: Long,
    laneBytes: Long,
    columns: Int
) {

  /** The row error, in the native errors' form (`row N: ...`). */
  def message(row: Long, limit: Long): String = {
    val all = if (columns > 1) s" (the row's inputs: $laneBytes bytes)" else ""
    s"row $row: column `$column`: $bytes bytes$all exceed ${RowGroups.Conf} = $limit bytes, the " +
      "most one native call takes"
  }
}

/** The rows of one native call: `rows` in order, the first being row `first` of the partition;
  * `oversized` maps a row's index in the group to the lanes it is too large for.
  */
private[torchspark] final case class RowGroup[R](
    rows: IndexedSeq[R],
    first: Long,
    oversized: Map[Int, Seq[Oversized]]
) {
  def size: Int = rows.size

  /** Row `i`'s overflow in lane `lane`, if any. */
  def over(i: Int, lane: Int = 0): Option[Oversized] =
    if (oversized.isEmpty) None else oversized.get(i).flatMap(_.find(_.lane == lane))
}

/** Cuts a partition's rows into the groups of one native call each, bounded by rows and by bytes
  * (docs/engine.md, "Bounded calls"). A group's inputs go to native code as one Arrow batch in one
  * JVM byte array, and Arrow's variable-width vectors and the array both stop at 2 GiB; the bound
  * also keeps a call within the engine's queue budget (256 MiB by default). A row whose own inputs
  * are over the bound goes in a group as nulls and becomes a row error ([[Oversized]]).
  */
private[torchspark] object RowGroups {

  /** The conf that bounds the input bytes of one native call (session or Spark conf). */
  val Conf = "spark.torchspark.maxBytesPerCall"

  /** 256 MiB: the engine's default queue bound, far below Arrow's 2 GiB. */
  val DefaultBytes: Long = 256L << 20

  /** 1 GiB: the largest bound allowed, half of Arrow's and the JVM array's 2 GiB. */
  val MaxBytes: Long = 1L << 30

  /** The bound as `conf` holds it (`256m`, `1g`, `65536`; absent: [[DefaultBytes]]). */
  def limit(conf: String => Option[String]): Long = conf(Conf).map(_.trim) match {
    case None | Some("") => DefaultBytes
    case Some(text)      =>
      val bytes =
        try org.apache.spark.network.util.JavaUtils.byteStringAsBytes(text)
        catch {
          case e: NumberFormatException =>
            throw new ConfigException(s"$Conf = `$text`: not a size (e.g. 64m, 256m, 1g)", e)
        }
      if (bytes < 1 || bytes > MaxBytes)
        throw new ConfigException(
          s"$Conf = `$text` ($bytes bytes): expected 1 byte to 1g ($MaxBytes bytes); Arrow " +
            "holds at most 2 GiB per column and the JVM at most 2 GiB per array"
        )
      bytes
  }

  /** The bound of `spark`'s session. */
  def limit(spark: org.apache.spark.sql.SparkSession): Long =
    limit(k => spark.conf.getOption(k))

  /** `rows` in groups of at most `maxRows` rows whose inputs, per lane, add up to at most
    * `maxBytes`. `weigh(r, lane)` is the bytes of row `r`'s inputs in lane `lane`;
    * `columns(r, lane)` the bytes of each of them, named `names(lane)(c)` (asked only for a row
    * over the bound). Lazy: reads at most one row past the group it returns.
    */
  def apply[R](
      rows: Iterator[R],
      maxRows: Int,
      maxBytes: Long,
      names: IndexedSeq[IndexedSeq[String]],
      weigh: (R, Int) => Long,
      columns: (R, Int) => Array[Long]
  ): Iterator[RowGroup[R]] = new Iterator[RowGroup[R]] {
    require(maxRows >= 1 && maxBytes >= 1, s"maxRows $maxRows, maxBytes $maxBytes")
    private val lanes = names.size
    private var offset = 0L
    // The next row and its lanes' bytes, read ahead (a group ends before a row that overflows).
    private var ahead: R = _
    private var hasAhead = false
    private val totals = new Array[Long](lanes)

    private def peek(): Boolean = {
      if (!hasAhead && rows.hasNext) {
        ahead = rows.next()
        var l = 0
        while (l < lanes) { totals(l) = weigh(ahead, l); l += 1 }
        hasAhead = true
      }
      hasAhead
    }

    def hasNext: Boolean = peek()

    def next(): RowGroup[R] = {
      if (!hasNext) throw new NoSuchElementException("no more rows")
      // Per row on the hot path (a million tabular rows): plain loops, nothing allocated.
      val out = new scala.collection.mutable.ArrayBuffer[R](math.min(maxRows, 1024))
      val over = scala.collection.mutable.Map.empty[Int, Seq[Oversized]]
      val sums = new Array[Long](lanes)
      var full = false
      while (!full && peek()) {
        var fits = true
        var anyOver = false
        var l = 0
        while (l < lanes) {
          if (totals(l) > maxBytes) anyOver = true
          else if (sums(l) + totals(l) > maxBytes) fits = false
          l += 1
        }
        if (out.nonEmpty && !fits) full = true
        else {
          if (anyOver) over(out.size) = oversized(ahead)
          l = 0
          while (l < lanes) { if (totals(l) <= maxBytes) sums(l) += totals(l); l += 1 }
          out += ahead
          hasAhead = false
          full = out.size >= maxRows
        }
      }
      val g = RowGroup[R](out.toIndexedSeq, offset, over.toMap)
      offset += g.size
      g
    }

    /** The lanes row `r` is over the bound in, each with its largest column. */
    private def oversized(r: R): Seq[Oversized] =
      (0 until lanes).filter(totals(_) > maxBytes).map { l =>
        val w = columns(r, l)
        val c = w.indices.maxBy(w(_))
        Oversized(l, names(l)(c), w(c), totals(l), w.length)
      }
  }
}
