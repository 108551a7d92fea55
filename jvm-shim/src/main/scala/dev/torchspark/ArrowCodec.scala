package dev.torchspark

import java.io.{ByteArrayInputStream, ByteArrayOutputStream}
import java.nio.channels.Channels

import scala.util.Try

import org.apache.arrow.memory.{BufferAllocator, RootAllocator}
import org.apache.arrow.vector.{
  FieldVector,
  Float4Vector,
  Float8Vector,
  IntVector,
  VarBinaryVector,
  VarCharVector,
  VectorSchemaRoot
}
import org.apache.arrow.vector.complex.{ListVector, StructVector}
import org.apache.arrow.vector.ipc.{ArrowStreamReader, ArrowStreamWriter}
import org.apache.arrow.vector.types.FloatingPointPrecision
import org.apache.arrow.vector.types.pojo.{ArrowType, FieldType}
import org.apache.spark.sql.Row
import org.apache.spark.sql.types._

/** How an image transformer's column holds its images (binary files, Spark's image struct, or
  * preprocessed C×H×W values), chosen from the column's Spark type. Not an input kind: that is
  * [[InputDecl.kind]] (Rust's `InputKind`: tensor, image, text, mask, type_ids).
  */
private[torchspark] sealed trait ImageColumn
private[torchspark] object ImageColumn {
  case object Binary extends ImageColumn
  case object SparkImage extends ImageColumn
  case object FloatArray extends ImageColumn
  case object DoubleArray extends ImageColumn

  private val imageFields = Seq("height", "width", "nChannels", "data")

  def of(column: String, dt: DataType): ImageColumn = dt match {
    case BinaryType                                                 => Binary
    case s: StructType if imageFields.forall(s.fieldNames.contains) => SparkImage
    case ArrayType(FloatType, _)                                    => FloatArray
    case ArrayType(DoubleType, _)                                   => DoubleArray
    case other                                                      =>
      throw new IllegalArgumentException(
        s"column `$column` has type ${other.simpleString}; torchspark reads binary (encoded " +
          "images, e.g. binaryFile's content), Spark's image struct, or array<float>"
      )
  }
}

/** One scored row, decoded from the native result. */
private[torchspark] final case class Scored(
    prediction: Int,
    probability: Array[Double],
    label: String,
    topK: Seq[Row],
    error: String
)

/** Rows in, Arrow IPC bytes out, and back: the JNI boundary's only format. */
private[torchspark] object ArrowCodec {
  private lazy val root: RootAllocator = new RootAllocator(Long.MaxValue)

  /** Bytes held by this JVM's Arrow buffers now: 0 between calls (every encode and decode releases
    * its buffers, failed ones too).
    */
  def allocatedBytes: Long = root.getAllocatedMemory

  /** `f` with a fresh child allocator, closed after it. When `f` throws, that is the error (an
    * allocator left holding buffers adds its complaint as suppressed, never in its place); the
    * encoders close what they built before they throw, so nothing stays allocated.
    */
  private[torchspark] def withAllocator[T](f: BufferAllocator => T): T = {
    val a = root.newChildAllocator("torchspark-batch", 0, Long.MaxValue)
    val out =
      try f(a)
      catch {
        case t: Throwable =>
          try a.close()
          catch { case leak: Throwable => t.addSuppressed(leak) }
          throw t
      }
    a.close()
    out
  }

  /** `v` after `fill(v)`; when `fill` throws, `v` is closed (its buffers released) first. */
  private[torchspark] def building[V <: AutoCloseable](v: V)(fill: V => Unit): V = {
    try fill(v)
    catch {
      case t: Throwable =>
        try v.close()
        catch { case e: Throwable => t.addSuppressed(e) }
        throw t
    }
    v
  }

  /** The vectors `make` builds in order, or, when one throws, none: the built ones are closed. */
  private[torchspark] def buildingAll(count: Int)(make: Int => FieldVector): Seq[FieldVector] = {
    val built = new scala.collection.mutable.ArrayBuffer[FieldVector](count)
    try {
      var i = 0
      while (i < count) { built += make(i); i += 1 }
    } catch {
      case t: Throwable =>
        built.foreach { v =>
          try v.close()
          catch { case e: Throwable => t.addSuppressed(e) }
        }
        throw t
    }
    built.toSeq
  }

  /** Bytes of the binary values among `values`. */
  private def binaryBytes(values: Array[Any]): Long = {
    var total = 0L
    values.foreach {
      case b: Array[Byte] => total += b.length
      case _              =>
    }
    total
  }

  /** Encodes one batch of column values (nulls allowed) as an IPC stream of one column. */
  def encode(kind: ImageColumn, values: Array[Any]): Array[Byte] = withAllocator { a =>
    val n = values.length
    val vector: FieldVector = kind match {
      case ImageColumn.Binary =>
        building(new VarBinaryVector("content", a)) { v =>
          // Sized once: doubling as values arrive would hold up to twice the group's bytes.
          v.allocateNew(math.max(binaryBytes(values), 1L), math.max(n, 1))
          var i = 0
          while (i < n) {
            values(i) match {
              case b: Array[Byte] => v.setSafe(i, b)
              case _              => v.setNull(i)
            }
            i += 1
          }
          v.setValueCount(n)
        }
      case ImageColumn.SparkImage                           => encodeImages(a, "image", values)
      case ImageColumn.FloatArray | ImageColumn.DoubleArray => encodeArrays(a, kind, values)
    }
    ipc(Seq(vector), n)
  }

  /** One batch of `n` rows with `vectors` as its columns, as an IPC stream; closes them. */
  private[torchspark] def ipc(vectors: Seq[FieldVector], n: Int): Array[Byte] = {
    val root =
      try VectorSchemaRoot.of(vectors: _*)
      catch { case t: Throwable => vectors.foreach(_.close()); throw t }
    try {
      root.setRowCount(n)
      // Sized for the batch: growing by doubling would copy a large group several times.
      val size = vectors.map(_.getBufferSize.toLong).sum + (64L << 10)
      val out = new ByteArrayOutputStream(math.min(size, Int.MaxValue - 64L).toInt)
      val w = new ArrowStreamWriter(root, null, Channels.newChannel(out))
      w.start(); w.writeBatch(); w.end(); w.close()
      out.toByteArray
    } finally root.close()
  }

  private def int32 = FieldType.nullable(new ArrowType.Int(32, true))

  /** Spark's image struct column `name`, as the native image reader takes it. */
  private[torchspark] def encodeImages(
      a: BufferAllocator,
      name: String,
      values: Array[Any]
  ): FieldVector = {
    building(StructVector.empty(name, a))(s => fillImages(s, values))
  }

  private def fillImages(s: StructVector, values: Array[Any]): Unit = {
    val origin =
      s.addOrGet("origin", FieldType.nullable(ArrowType.Utf8.INSTANCE), classOf[VarCharVector])
    val h = s.addOrGet("height", int32, classOf[IntVector])
    val w = s.addOrGet("width", int32, classOf[IntVector])
    val c = s.addOrGet("nChannels", int32, classOf[IntVector])
    val mode = s.addOrGet("mode", int32, classOf[IntVector])
    val data =
      s.addOrGet("data", FieldType.nullable(ArrowType.Binary.INSTANCE), classOf[VarBinaryVector])
    s.allocateNew()
    val n = values.length
    for (i <- 0 until n) values(i) match {
      case r: Row =>
        s.setIndexDefined(i)
        val o = r.getAs[String]("origin")
        if (o == null) origin.setNull(i) else origin.setSafe(i, o.getBytes("UTF-8"))
        h.setSafe(i, r.getAs[Int]("height"))
        w.setSafe(i, r.getAs[Int]("width"))
        c.setSafe(i, r.getAs[Int]("nChannels"))
        if (r.schema.fieldNames.contains("mode")) mode.setSafe(i, r.getAs[Int]("mode"))
        else mode.setNull(i)
        val d = r.getAs[Array[Byte]]("data")
        if (d == null) data.setNull(i) else data.setSafe(i, d)
      case _ => s.setNull(i)
    }
    Seq(origin, h, w, c, mode, data).foreach(_.setValueCount(n))
    s.setValueCount(n)
  }

  private def encodeArrays(a: BufferAllocator, kind: ImageColumn, values: Array[Any]): FieldVector =
    building(ListVector.empty("input", a))(l => fillArrays(l, kind, values))

  private def fillArrays(l: ListVector, kind: ImageColumn, values: Array[Any]): Unit = {
    val precision =
      if (kind == ImageColumn.FloatArray) FloatingPointPrecision.SINGLE
      else FloatingPointPrecision.DOUBLE
    val inner = l
      .addOrGetVector[FieldVector](FieldType.nullable(new ArrowType.FloatingPoint(precision)))
      .getVector
    l.allocateNew()
    var idx = 0
    for (i <- values.indices) values(i) match {
      case s: scala.collection.Seq[_] =>
        l.startNewValue(i)
        inner match {
          case f: Float4Vector => s.foreach { x => f.setSafe(idx, x.asInstanceOf[Float]); idx += 1 }
          case d: Float8Vector =>
            s.foreach { x => d.setSafe(idx, x.asInstanceOf[Double]); idx += 1 }
          case other => throw new IllegalStateException(s"unexpected list child $other")
        }
        l.endValue(i, s.size)
      case _ => l.setNull(i)
    }
    inner.setValueCount(idx)
    l.setValueCount(values.length)
  }

  private[torchspark] def read[T](bytes: Array[Byte])(f: VectorSchemaRoot => T): T =
    withAllocator { a =>
      val reader = new ArrowStreamReader(new ByteArrayInputStream(bytes), a)
      try {
        reader.loadNextBatch()
        f(reader.getVectorSchemaRoot)
      } finally reader.close()
    }

  /** The stage nanoseconds that native code reports in a result's schema metadata; zeros when
    * absent.
    */
  def stageNanos(bytes: Array[Byte]): StageNanos = withAllocator { a =>
    val reader = new ArrowStreamReader(new ByteArrayInputStream(bytes), a)
    try {
      val meta = reader.getVectorSchemaRoot.getSchema.getCustomMetadata
      def get(k: String): Long =
        Option(meta)
          .flatMap(m => Option(m.get(k)))
          .flatMap(v => Try(v.toLong).toOption)
          .getOrElse(0L)
      StageNanos(
        get("torchspark.preprocess_ns"),
        get("torchspark.forward_ns"),
        get("torchspark.decode_ns"),
        get("torchspark.resize_ns"),
        get("torchspark.truncated_rows"),
        get("torchspark.queue_ns"),
        get("torchspark.batch_rows"),
        get("torchspark.batch_jobs")
      )
    } finally reader.close()
  }

  private def floats(l: ListVector, i: Int): Array[Double] = {
    val inner = l.getDataVector.asInstanceOf[Float4Vector]
    val (start, end) = (l.getElementStartIndex(i), l.getElementEndIndex(i))
    val out = new Array[Double](end - start)
    var j = start
    while (j < end) { out(j - start) = inner.get(j).toDouble; j += 1 }
    out
  }

  private def str(v: VarCharVector, i: Int): String =
    if (v.isNull(i)) null else new String(v.get(i), "UTF-8")

  def decodeScores(bytes: Array[Byte]): Array[Scored] = read(bytes) { root =>
    val pred = root.getVector("prediction").asInstanceOf[IntVector]
    val prob = root.getVector("probability").asInstanceOf[ListVector]
    val label = root.getVector("predicted_label").asInstanceOf[VarCharVector]
    val top = root.getVector("top_k").asInstanceOf[ListVector]
    val topStruct = top.getDataVector.asInstanceOf[StructVector]
    val topIdx = topStruct.getChild("index").asInstanceOf[IntVector]
    val topLabel = topStruct.getChild("label").asInstanceOf[VarCharVector]
    val topProb = topStruct.getChild("probability").asInstanceOf[Float4Vector]
    val err = root.getVector("error").asInstanceOf[VarCharVector]
    Array.tabulate(root.getRowCount) { i =>
      if (!err.isNull(i)) Scored(-1, null, null, null, str(err, i))
      else {
        val ks = (top.getElementStartIndex(i) until top.getElementEndIndex(i)).map { j =>
          Row(topIdx.get(j), str(topLabel, j), topProb.get(j).toDouble)
        }
        Scored(pred.get(i), floats(prob, i), str(label, i), ks, null)
      }
    }
  }

  /** (features, error) per row. */
  def decodeFeatures(bytes: Array[Byte]): Array[(Array[Double], String)] = read(bytes) { root =>
    val feats = root.getVector("features").asInstanceOf[ListVector]
    val err = root.getVector("error").asInstanceOf[VarCharVector]
    Array.tabulate(root.getRowCount) { i =>
      if (!err.isNull(i)) (null, str(err, i)) else (floats(feats, i), null)
    }
  }
}
