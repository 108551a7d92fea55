package dev.torchspark

import java.io.{ByteArrayInputStream, ByteArrayOutputStream}
import java.nio.channels.Channels

import scala.util.Try

import org.apache.arrow.memory.{BufferAllocator, RootAllocator}
import org.apache.arrow.vector.{FieldVector, IntVector, VarBinaryVector, VarCharVector}
import org.apache.arrow.vector.VectorSchemaRoot
import org.apache.arrow.vector.complex.StructVector
import org.apache.arrow.vector.ipc.{ArrowStreamReader, ArrowStreamWriter}
import org.apache.arrow.vector.types.pojo.{ArrowType, FieldType}
import org.apache.spark.sql.Row

/** The Arrow plumbing of the JNI boundary (its only format): allocators that release every buffer,
  * IPC streams, Spark's image struct as the native image reader takes it, and the stage times a
  * native result carries. [[TensorCodec]] encodes the columns and decodes the outputs.
  */
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
  private[torchspark] def binaryBytes(values: Array[Any]): Long = {
    var total = 0L
    values.foreach {
      case b: Array[Byte] => total += b.length
      case _              =>
    }
    total
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
}
