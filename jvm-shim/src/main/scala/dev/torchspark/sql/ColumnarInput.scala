package dev.torchspark.sql

import java.nio.ByteOrder

import scala.collection.mutable

import org.apache.arrow.vector.{BaseFixedWidthVector, BitVectorHelper, FieldVector}
import org.apache.arrow.vector.complex.ListVector
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{
  Attribute,
  CreateArray,
  Expression,
  UnsafeProjection
}
import org.apache.spark.sql.execution.{
  ColumnarToRowExec,
  InputAdapter,
  SparkPlan,
  WholeStageCodegenExec
}
import org.apache.spark.sql.execution.vectorized.{
  OffHeapColumnVector,
  OnHeapColumnVector,
  WritableColumnVector
}
import org.apache.spark.sql.types._
import org.apache.spark.sql.vectorized.{ColumnVector, ColumnarBatch}
import org.apache.spark.unsafe.Platform

import dev.torchspark.{ArrowCodec, Oversized, RowGroup, RowGroups, TensorCodec}

/** The Spark-columnar input path of [[TorchEvalExec]] (docs/engine.md, "Input paths"): when the
  * node's child is a columnar scan that Spark turned into rows for it (vectorized Parquet/ORC, the
  * in-memory cache), the node reads the scan's `ColumnarBatch`es itself and copies each argument's
  * column into the Arrow input of one native call with bulk copies, never through Row objects or
  * Scala values. The Arrow batch is the one the row path sends for the same rows, field for field,
  * and the rows are grouped as [[RowGroups]] groups them, so the results are the same.
  *
  * Reads numeric scalar columns (double, float, long, int, short, byte), arrays of them, and
  * `array(c1, c2, ...)` of numeric columns of one type; anything else (decimals, strings, vectors,
  * images, expressions) keeps the row path.
  */
private[torchspark] object ColumnarInput {

  /** The conf that turns the columnar input path off (`false`): every call then reads rows. */
  val Conf = "spark.torchspark.columnarInput"

  /** How one argument is read from a batch. */
  sealed trait Arg {
    def elem: DataType
    def width: Int = ColumnarInput.width(elem)

    /** The type the row path encodes the argument as (its Arrow field). */
    def sparkType: DataType
  }

  /** A numeric column, one value per row. */
  final case class Scalar(ordinal: Int, elem: DataType) extends Arg {
    def sparkType: DataType = elem
  }

  /** An array<numeric> column. */
  final case class Listed(ordinal: Int, elem: DataType) extends Arg {
    def sparkType: DataType = ArrayType(elem)
  }

  /** `array(c1, ..., ck)` of numeric columns of one type: a list of k values per row. */
  final case class Gathered(ordinals: IndexedSeq[Int], elem: DataType) extends Arg {
    def sparkType: DataType = ArrayType(elem)
  }

  private def width(dt: DataType): Int = dt match {
    case DoubleType | LongType   => 8
    case FloatType | IntegerType => 4
    case ShortType               => 2
    case _                       => 1
  }

  private val numeric: Set[DataType] =
    Set(DoubleType, FloatType, LongType, IntegerType, ShortType, ByteType)

  /** The columnar plan of each call's arguments over `input`, or None when one cannot be read from
    * columns (the node then reads rows). Bulk copies write the JVM's native byte order into Arrow's
    * little-endian buffers: big-endian JVMs read rows.
    */
  def plan(args: Seq[Seq[Expression]], input: Seq[Attribute]): Option[Seq[Seq[Arg]]] = {
    def ordinal(e: Expression): Option[Int] = e match {
      case a: Attribute => Some(input.indexWhere(_.exprId == a.exprId)).filter(_ >= 0)
      case _            => None
    }
    def arg(e: Expression): Option[Arg] = e match {
      case a: Attribute if numeric(a.dataType) => ordinal(a).map(Scalar(_, a.dataType))
      case a: Attribute                        =>
        a.dataType match {
          case ArrayType(t, _) if numeric(t) => ordinal(a).map(Listed(_, t))
          case _                             => None
        }
      case c: CreateArray if c.children.nonEmpty =>
        val t = c.children.head.dataType
        val ords = c.children.map(x => if (x.dataType == t) ordinal(x) else None)
        if (numeric(t) && ords.forall(_.isDefined)) Some(Gathered(ords.flatten.toIndexedSeq, t))
        else None
      case _ => None
    }
    if (ByteOrder.nativeOrder() != ByteOrder.LITTLE_ENDIAN) None
    else {
      val planned = args.map(_.map(arg))
      if (planned.forall(_.forall(_.isDefined))) Some(planned.map(_.flatten)) else None
    }
  }

  /** The columnar plan the node can read: the one under the `ColumnarToRowExec` Spark put over
    * `child` (inside a codegen stage or not) when `child` is only that transition over a columnar
    * node (a vectorized file scan), or `child` itself when it gives both rows and batches (the
    * in-memory cache's scan).
    */
  def source(child: SparkPlan): Option[SparkPlan] = child match {
    case c: ColumnarToRowExec if c.child.supportsColumnar => Some(c.child)
    case w: WholeStageCodegenExec                         => source(w.child)
    case i: InputAdapter                                  => source(i.child)
    case p if p.supportsColumnar                          => Some(p)
    case _                                                => None
  }

  /** One group: its rows (copied, as the row path's), and each lane's Arrow IPC input. */
  final case class Group(rows: RowGroup[InternalRow], inputs: Array[Array[Byte]])

  /** Fixed-width values of one Arrow column being gathered, packed as Arrow lays them out. */
  private final class Packed(val width: Int) {
    var data = new Array[Byte](width * 1024)
    val nulls = new java.util.BitSet()
    var n = 0

    private def reserve(more: Int): Unit =
      if ((n + more).toLong * width > data.length) {
        val need = (n + more).toLong * width
        val size = math.max(need, data.length * 2L)
        if (size > Int.MaxValue - 16) throw new IllegalStateException(s"a column of $need bytes")
        data = java.util.Arrays.copyOf(data, size.toInt)
      }

    private def at(i: Int): Long = Platform.BYTE_ARRAY_OFFSET + i.toLong * width

    def appendNull(): Unit = {
      reserve(1)
      java.util.Arrays.fill(data, n * width, (n + 1) * width, 0.toByte)
      nulls.set(n)
      n += 1
    }

    /** Value `row` of `v` (of type `dt`): the per-value getter, right for every vector kind (a
      * dictionary is decoded, a constant repeated).
      */
    def appendOne(v: ColumnVector, dt: DataType, row: Int): Unit =
      if (v.isNullAt(row)) appendNull()
      else {
        reserve(1)
        put(v, dt, row, n)
        n += 1
      }

    private def put(v: ColumnVector, dt: DataType, row: Int, i: Int): Unit = dt match {
      case DoubleType  => Platform.putDouble(data, at(i), v.getDouble(row))
      case FloatType   => Platform.putFloat(data, at(i), v.getFloat(row))
      case LongType    => Platform.putLong(data, at(i), v.getLong(row))
      case IntegerType => Platform.putInt(data, at(i), v.getInt(row))
      case ShortType   => Platform.putShort(data, at(i), v.getShort(row))
      case _           => Platform.putByte(data, at(i), v.getByte(row))
    }

    /** Values `start` until `start + count` of `v`: one bulk copy from a plain on- or off-heap
      * vector; value by value from any other (a dictionary-encoded vector's bulk getters would
      * return its ids, a constant or Arrow vector has no such buffer). Nulls as [[appendNull]].
      */
    def appendRange(v: ColumnVector, dt: DataType, start: Int, count: Int): Unit = {
      if (count <= 0) return
      reserve(count)
      val bytes = count.toLong * width
      v match {
        case off: OffHeapColumnVector if !off.hasDictionary =>
          Platform.copyMemory(
            null,
            off.valuesNativeAddress() + start.toLong * width,
            data,
            at(n),
            bytes
          )
        case on: OnHeapColumnVector if !on.hasDictionary =>
          val (array, base) = dt match {
            case DoubleType  => (on.getDoubles(start, count), Platform.DOUBLE_ARRAY_OFFSET)
            case FloatType   => (on.getFloats(start, count), Platform.FLOAT_ARRAY_OFFSET)
            case LongType    => (on.getLongs(start, count), Platform.LONG_ARRAY_OFFSET)
            case IntegerType => (on.getInts(start, count), Platform.INT_ARRAY_OFFSET)
            case ShortType   => (on.getShorts(start, count), Platform.SHORT_ARRAY_OFFSET)
            case _           => (on.getBytes(start, count), Platform.BYTE_ARRAY_OFFSET)
          }
          Platform.copyMemory(array, base.toLong, data, at(n), bytes)
        case _ =>
          var r = 0
          while (r < count) {
            if (!v.isNullAt(start + r)) put(v, dt, start + r, n + r)
            r += 1
          }
      }
      if (v.hasNull) {
        var r = 0
        while (r < count) {
          if (v.isNullAt(start + r)) {
            val i = n + r
            java.util.Arrays.fill(data, i * width, (i + 1) * width, 0.toByte)
            nulls.set(i)
          }
          r += 1
        }
      }
      n += count
    }

    /** Into `v` (allocated here), as TensorCodec's row encoder fills it. */
    def fill(v: BaseFixedWidthVector): Unit = {
      v.allocateNew(math.max(n, 1))
      v.getDataBuffer.setBytes(0, data, 0, n.toLong * width)
      val valid = Array.fill[Byte]((n + 7) / 8)(-1)
      if (n % 8 != 0) valid(n / 8) = ((1 << (n % 8)) - 1).toByte
      var i = nulls.nextSetBit(0)
      while (i >= 0 && i < n) {
        valid(i >> 3) = (valid(i >> 3) & ~(1 << (i & 7))).toByte
        i = nulls.nextSetBit(i + 1)
      }
      v.getValidityBuffer.setBytes(0, valid, 0, valid.length.toLong)
      v.setValueCount(n)
    }
  }

  /** One argument's Arrow column of the group being built. */
  private final class Builder(arg: Arg) {
    val values = new Packed(arg.width)
    // Lists: each row's length, -1 for a null list.
    private var lengths = new Array[Int](if (arg.isInstanceOf[Scalar]) 0 else 1024)
    private var rows = 0

    private def addLength(len: Int): Unit = {
      if (rows == lengths.length) lengths = java.util.Arrays.copyOf(lengths, rows * 2)
      lengths(rows) = len
      rows += 1
    }

    def appendNull(): Unit = arg match {
      case _: Scalar => values.appendNull()
      case _         => addLength(-1)
    }

    /** Rows `start` until `start + count` of `batch`. */
    def append(batch: ColumnarBatch, start: Int, count: Int): Unit = arg match {
      case Scalar(o, t)      => values.appendRange(batch.column(o), t, start, count)
      case Gathered(ords, t) =>
        val cols = ords.map(batch.column)
        var r = start
        while (r < start + count) {
          var c = 0
          while (c < cols.length) { values.appendOne(cols(c), t, r); c += 1 }
          addLength(cols.length)
          r += 1
        }
      case Listed(o, t) =>
        batch.column(o) match {
          case w: WritableColumnVector =>
            // Contiguous rows' elements go in one bulk copy.
            val child = w.arrayData()
            var (runStart, runEnd) = (0, 0)
            var r = start
            while (r < start + count) {
              if (w.isNullAt(r)) addLength(-1)
              else {
                val (off, len) = (w.getArrayOffset(r), w.getArrayLength(r))
                if (off != runEnd) {
                  values.appendRange(child, t, runStart, runEnd - runStart)
                  runStart = off
                }
                runEnd = off + len
                addLength(len)
              }
              r += 1
            }
            values.appendRange(child, t, runStart, runEnd - runStart)
          case v =>
            var r = start
            while (r < start + count) {
              if (v.isNullAt(r)) addLength(-1)
              else {
                val a = v.getArray(r)
                val len = a.numElements()
                var j = 0
                while (j < len) {
                  if (a.isNullAt(j)) values.appendNull()
                  else
                    t match {
                      case DoubleType  => appendScalar(Platform.putDouble(_, _, a.getDouble(j)))
                      case FloatType   => appendScalar(Platform.putFloat(_, _, a.getFloat(j)))
                      case LongType    => appendScalar(Platform.putLong(_, _, a.getLong(j)))
                      case IntegerType => appendScalar(Platform.putInt(_, _, a.getInt(j)))
                      case ShortType   => appendScalar(Platform.putShort(_, _, a.getShort(j)))
                      case _           => appendScalar(Platform.putByte(_, _, a.getByte(j)))
                    }
                  j += 1
                }
                addLength(len)
              }
              r += 1
            }
        }
    }

    private def appendScalar(put: (Array[Byte], Long) => Unit): Unit = {
      values.appendNull()
      values.nulls.clear(values.n - 1)
      put(values.data, Platform.BYTE_ARRAY_OFFSET + (values.n - 1).toLong * values.width)
    }

    def vector(a: org.apache.arrow.memory.BufferAllocator, name: String): FieldVector = {
      val v = TensorCodec.arrowField(name, arg.sparkType).createVector(a)
      ArrowCodec.building(v) {
        case f: BaseFixedWidthVector => values.fill(f)
        case l: ListVector           =>
          l.setInitialCapacity(math.max(rows, 1))
          l.allocateNew()
          var i = 0
          while (i < rows) {
            l.startNewValue(i)
            val len = lengths(i)
            l.endValue(i, math.max(len, 0))
            // A null: an empty slot (its offsets written) marked invalid, as the row path.
            if (len < 0) BitVectorHelper.unsetBit(l.getValidityBuffer, i)
            i += 1
          }
          values.fill(l.getDataVector.asInstanceOf[BaseFixedWidthVector])
          l.setValueCount(rows)
        case other => throw new IllegalStateException(s"no columnar filler for $other")
      }
    }
  }

  /** What the row path's byte bound counts for row `r` of `arg` (TensorCodec.bytesOf of the value
    * it would send): 0 for a null, the width per element, and for a list whose first element is
    * null only its non-null elements.
    */
  private def bytesOf(arg: Arg, batch: ColumnarBatch, r: Int): Long = arg match {
    case Scalar(o, _)      => if (batch.column(o).isNullAt(r)) 0L else arg.width
    case Gathered(ords, _) =>
      if (!batch.column(ords(0)).isNullAt(r)) arg.width.toLong * ords.length
      else ords.count(o => !batch.column(o).isNullAt(r)).toLong * arg.width
    case Listed(o, _) =>
      batch.column(o) match {
        case w: WritableColumnVector =>
          if (w.isNullAt(r)) 0L
          else {
            val (off, len) = (w.getArrayOffset(r), w.getArrayLength(r))
            val child = w.arrayData()
            if (len == 0 || !child.isNullAt(off)) arg.width.toLong * len
            else (off until off + len).count(j => !child.isNullAt(j)).toLong * arg.width
          }
        case v => listBytes(arg, v, r)
      }
  }

  private def listBytes(arg: Arg, v: ColumnVector, r: Int): Long =
    if (v.isNullAt(r)) 0L
    else {
      val a = v.getArray(r)
      val len = a.numElements()
      if (len == 0 || !a.isNullAt(0)) arg.width.toLong * len
      else (0 until len).count(j => !a.isNullAt(j)).toLong * arg.width
    }

  /** The batches' rows in groups of one native call each, bounded as [[RowGroups]] bounds the row
    * path's (at most `maxRows` rows and `maxBytes` of each lane's inputs; a row over the bound
    * alone goes as nulls and is named in `oversized`). Each batch is copied out whole before the
    * next is read: the Parquet reader and the cache refill the same vectors.
    *
    * @param lanes
    *   per call, its arguments' columnar plan and the Arrow field name of each (the input names)
    * @param names
    *   per call, what its arguments are called in a byte-bound row error
    */
  def groups(
      batches: Iterator[ColumnarBatch],
      lanes: IndexedSeq[IndexedSeq[(Arg, String)]],
      names: IndexedSeq[IndexedSeq[String]],
      copyRow: UnsafeProjection,
      maxRows: Int,
      maxBytes: Long,
      onBatch: () => Unit
  ): Iterator[Group] = new Iterator[Group] {
    require(maxRows >= 1 && maxBytes >= 1, s"maxRows $maxRows, maxBytes $maxBytes")
    private val ready = new java.util.ArrayDeque[Group]()
    private var offset = 0L
    private var builders: IndexedSeq[IndexedSeq[Builder]] = fresh()
    private var rows = new mutable.ArrayBuffer[InternalRow](math.min(maxRows, 4096))
    private var over = mutable.Map.empty[Int, Seq[Oversized]]
    private val sums = new Array[Long](lanes.size)
    private val totals = new Array[Long](lanes.size)

    private def fresh() = lanes.map(_.map { case (a, _) => new Builder(a) })

    private def finish(): Unit = if (rows.nonEmpty) {
      val n = rows.size
      val inputs = lanes.indices.map { l =>
        ArrowCodec.withAllocator { a =>
          val vs = ArrowCodec.buildingAll(lanes(l).size) { i =>
            builders(l)(i).vector(a, lanes(l)(i)._2)
          }
          ArrowCodec.ipc(vs, n)
        }
      }.toArray
      ready.addLast(Group(RowGroup[InternalRow](rows.toIndexedSeq, offset, over.toMap), inputs))
      offset += n
      builders = fresh()
      rows = new mutable.ArrayBuffer[InternalRow](math.min(maxRows, 4096))
      over = mutable.Map.empty
      java.util.Arrays.fill(sums, 0L)
    }

    /** Rows [from, until) of `batch` into every lane, in bulk. */
    private def flush(batch: ColumnarBatch, from: Int, until: Int): Unit =
      if (until > from) builders.foreach(_.foreach(_.append(batch, from, until - from)))

    private def read(batch: ColumnarBatch): Unit = {
      onBatch()
      val count = batch.numRows()
      var sliceStart = 0
      var r = 0
      while (r < count) {
        var l = 0
        while (l < lanes.size) {
          var t = 0L
          var i = 0
          while (i < lanes(l).size) { t += bytesOf(lanes(l)(i)._1, batch, r); i += 1 }
          totals(l) = t
          l += 1
        }
        var fits = true
        var anyOver = false
        l = 0
        while (l < lanes.size) {
          if (totals(l) > maxBytes) anyOver = true
          else if (sums(l) + totals(l) > maxBytes) fits = false
          l += 1
        }
        if (rows.nonEmpty && !fits) {
          flush(batch, sliceStart, r)
          sliceStart = r
          finish()
        }
        if (anyOver) {
          flush(batch, sliceStart, r)
          val lanesOver = lanes.indices.filter(totals(_) > maxBytes)
          over(rows.size) = lanesOver.map { ln =>
            val w = lanes(ln).map { case (a, _) => bytesOf(a, batch, r) }
            val c = w.indices.maxBy(w(_))
            Oversized(ln, names(ln)(c), w(c), totals(ln), w.size)
          }
          lanes.indices.foreach { ln =>
            if (totals(ln) > maxBytes) builders(ln).foreach(_.appendNull())
            else builders(ln).foreach(_.append(batch, r, 1))
          }
          sliceStart = r + 1
        }
        l = 0
        while (l < lanes.size) { if (totals(l) <= maxBytes) sums(l) += totals(l); l += 1 }
        rows += copyRow(batch.getRow(r)).copy()
        if (rows.size >= maxRows) {
          flush(batch, sliceStart, r + 1)
          sliceStart = r + 1
          finish()
        }
        r += 1
      }
      flush(batch, sliceStart, count)
    }

    def hasNext: Boolean = {
      while (ready.isEmpty && batches.hasNext) read(batches.next())
      if (ready.isEmpty) finish()
      !ready.isEmpty
    }

    def next(): Group = {
      if (!hasNext) throw new NoSuchElementException("no more rows")
      ready.pollFirst()
    }
  }
}
