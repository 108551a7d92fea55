package dev.torchspark

import java.io.ByteArrayInputStream
import java.nio.{ByteBuffer, ByteOrder}
import java.util.concurrent.ConcurrentHashMap

import com.fasterxml.jackson.databind.{JsonNode, ObjectMapper}
import org.apache.arrow.memory.BufferAllocator
import org.apache.arrow.vector.{
  BaseFixedWidthVector,
  BigIntVector,
  BitVector,
  BitVectorHelper,
  FieldVector,
  Float4Vector,
  Float8Vector,
  IntVector,
  SmallIntVector,
  TinyIntVector,
  ValueVector,
  VarBinaryVector,
  VarCharVector
}
import org.apache.arrow.vector.complex.{ListVector, StructVector}
import org.apache.arrow.vector.ipc.ArrowStreamReader
import org.apache.arrow.vector.types.FloatingPointPrecision
import org.apache.arrow.vector.types.pojo.{ArrowType, Field, FieldType}
import org.apache.spark.ml.linalg.{DenseVector, SQLDataTypes, SparseVector, Vector, Vectors}
import org.apache.spark.sql.Row
import org.apache.spark.sql.types._

/** One declared input of a model (Rust's `spec::general::InputDecl`), as `NativeBridge.describe`
  * lists it (`torchspark.inputs`): `kind` is Rust's `InputKind` (tensor, image, text, mask or
  * type_ids); `columns` the spec's columns (none for a generated input). Not a forward argument:
  * that is Rust's `value::ModelInput`.
  */
private[torchspark] final case class InputDecl(
    name: String,
    kind: String,
    columns: Seq[String],
    dtype: String,
    shape: Seq[Long]
) {
  def isMask: Boolean = kind == "mask"

  /** Made natively from another input (`mask`, `type_ids`): it reads no column. */
  def isGenerated: Boolean = kind == "mask" || kind == "type_ids"
  def isText: Boolean = kind == "text"
  def isImage: Boolean = kind == "image"
  def shapeText: String = shape.mkString("[", ", ", "]")
}

/** What a spec declares, as the JVM needs it: its inputs, and one Spark field per output (named as
  * in the spec; a `vector` output is an ML Vector).
  */
private[torchspark] final case class ModelSchema(
    inputs: Seq[InputDecl],
    outputs: Seq[StructField]
) {

  /** The inputs read from columns (a mask or type_ids is generated natively). */
  def dataInputs: Seq[InputDecl] = inputs.filterNot(_.isGenerated)
}

private[torchspark] object ModelSchema {
  private val mapper = new ObjectMapper()
  private val cache = new ConcurrentHashMap[(String, String), ModelSchema]()

  /** The inputs of the spec `specJson` (either version) and the outputs a call with `preset`
    * returns (`score`, `featurize`, `predict`, `embed`: docs/internals.md, the call protocol), from
    * the native side's `describePreset`: no model is loaded. Throws [[ModelSpecException]] for an
    * invalid spec or a preset it cannot give, naming `where` (the spec file) when given.
    */
  def of(specJson: String, preset: String = "predict", where: String = null): ModelSchema = {
    val key = (preset, specJson)
    val hit = cache.get(key)
    if (hit != null) return hit
    val described =
      try parse(NativeBridge.describePreset(specJson, preset))
      catch {
        // The native side names no file: it was given the text.
        case e: ModelSpecException if where != null =>
          val reason = e.getMessage.stripPrefix("model spec <spec>: ")
          throw new ModelSpecException(s"model spec $where: $reason", e)
      }
    cache.put(key, described)
    described
  }

  private def parse(ipc: Array[Byte]): ModelSchema = ArrowCodec.withAllocator { a =>
    val reader = new ArrowStreamReader(new ByteArrayInputStream(ipc), a)
    try {
      val schema = reader.getVectorSchemaRoot.getSchema
      val fields = schema.getFields
      val outputs = (0 until fields.size).map(fields.get).filter(_.getName != "error").map { f =>
        StructField(f.getName, sparkType(f), nullable = true)
      }
      val meta = Option(schema.getCustomMetadata).flatMap(m => Option(m.get("torchspark.inputs")))
      val inputs = meta.toSeq.flatMap { text =>
        val arr = mapper.readTree(text)
        (0 until arr.size).map(arr.get).map { n =>
          def strings(j: JsonNode) = (0 until j.size).map(j.get(_).asText)
          InputDecl(
            n.get("name").asText,
            n.get("kind").asText,
            strings(n.get("columns")),
            n.get("dtype").asText,
            (0 until n.get("shape").size).map(n.get("shape").get(_).asLong)
          )
        }
      }
      ModelSchema(inputs, outputs)
    } finally reader.close()
  }

  /** `dt` with every float (in arrays and structs too) a double. */
  def withDoubles(dt: DataType): DataType = dt match {
    case FloatType        => DoubleType
    case ArrayType(e, n)  => ArrayType(withDoubles(e), n)
    case StructType(flds) => StructType(flds.map(f => f.copy(dataType = withDoubles(f.dataType))))
    case other            => other
  }

  /** Field metadata of a `vector` output (an ML Vector on the JVM). */
  def isVector(f: Field): Boolean =
    Option(f.getMetadata).flatMap(m => Option(m.get("torchspark.column"))).contains("vector")

  /** The Spark type of a native output field. */
  def sparkType(f: Field): DataType =
    if (isVector(f)) SQLDataTypes.VectorType
    else
      f.getType match {
        case fp: ArrowType.FloatingPoint =>
          if (fp.getPrecision == FloatingPointPrecision.DOUBLE) DoubleType else FloatType
        case i: ArrowType.Int if i.getIsSigned =>
          i.getBitWidth match {
            case 64 => LongType
            case 32 => IntegerType
            case 16 => ShortType
            case _  => ByteType
          }
        case _: ArrowType.Bool   => BooleanType
        case _: ArrowType.Binary => BinaryType
        case _: ArrowType.Utf8   => StringType
        case _: ArrowType.List   =>
          val c = f.getChildren.get(0)
          ArrayType(sparkType(c), c.isNullable)
        case _: ArrowType.Struct =>
          val cs = f.getChildren
          StructType((0 until cs.size).map(cs.get).map { c =>
            StructField(c.getName, sparkType(c), c.isNullable)
          })
        case other =>
          throw new ModelSpecException(s"output `${f.getName}`: no Spark type for Arrow $other")
      }
}

/** The general path's columns both ways: DataFrame columns of any supported type to one Arrow
  * batch, and the native result's output columns back to Spark values.
  */
private[torchspark] object TensorCodec {

  private val numeric: Set[DataType] =
    Set(DoubleType, FloatType, LongType, IntegerType, ShortType, ByteType, BooleanType)

  private def isNumeric(dt: DataType): Boolean = numeric(dt) || dt.isInstanceOf[DecimalType]

  /** A numeric scalar type (one value per row, gathered with others into a vector). */
  def isScalar(dt: DataType): Boolean = isNumeric(dt)

  /** A column a text input reads: a string, or binary holding UTF-8 bytes. */
  def isText(dt: DataType): Boolean = dt == StringType || dt == BinaryType

  /** Spark's image struct (the `image` data source's column). */
  def isImageStruct(dt: DataType): Boolean = dt match {
    case s: StructType => Seq("height", "width", "nChannels", "data").forall(s.fieldNames.contains)
    case _             => false
  }

  /** A column an image input reads: binary (encoded images), Spark's image struct, or the image's
    * preprocessed C×H×W values (array<float> or array<double>).
    */
  def isImageColumn(dt: DataType): Boolean = dt match {
    case BinaryType                           => true
    case ArrayType(FloatType | DoubleType, _) => true
    case d                                    => isImageStruct(d)
  }

  /** What an image input reads, for messages. */
  val imageColumns: String =
    "binary (encoded images, e.g. binaryFile's content), Spark's image struct, or the " +
      "preprocessed C×H×W values as array<float> (or array<double>)"

  private val readable =
    "torchspark reads numbers (numeric columns, nested arrays of numbers, ML Vectors), binary " +
      "(encoded images, UTF-8 text), strings (text) and Spark's image struct"

  /** Why a column of type `dt` cannot be sent, or None: numeric scalars, (nested) arrays of them,
    * ML Vectors, binary, strings (for text inputs: see [[isText]]) and Spark's image struct can.
    */
  def unsupported(dt: DataType): Option[String] = dt match {
    case BinaryType | StringType                  => None
    case d if isNumeric(d)                        => None
    case d if d == SQLDataTypes.VectorType        => None
    case s: StructType if isImageStruct(s)        => None
    case ArrayType(e, _) if arrayLeaf(e).nonEmpty => None
    case other                                    =>
      Some(
        s"has type ${other.simpleString}; $readable"
      )
  }

  private def arrayLeaf(dt: DataType): Option[DataType] = dt match {
    case ArrayType(e, _)   => arrayLeaf(e)
    case d if isNumeric(d) => Some(d)
    case _                 => None
  }

  /** One batch: column `name` of type `dt` holds `values(i)` for row i (nulls allowed). */
  final case class Column(name: String, dt: DataType, values: Array[Any])

  /** The columns as one Arrow IPC batch of `n` rows, fields named as the columns. */
  def encode(columns: Seq[Column], n: Int): Array[Byte] = ArrowCodec.withAllocator { a =>
    // A column that fails to encode closes the columns built before it, and itself.
    ArrowCodec.ipc(ArrowCodec.buildingAll(columns.size)(i => vectorOf(a, columns(i))), n)
  }

  private def vectorOf(a: BufferAllocator, c: Column): FieldVector = c.dt match {
    case s: StructType if isImageStruct(s) => ArrowCodec.encodeImages(a, c.name, c.values)
    case _                                 =>
      ArrowCodec.building(arrowField(c.name, c.dt).createVector(a)) { v =>
        v match {
          // Sized once: doubling as images arrive would hold up to twice the group's bytes.
          case b: VarBinaryVector =>
            b.allocateNew(
              math.max(ArrowCodec.binaryBytes(c.values), 1L),
              math.max(c.values.length, 1)
            )
          case _ => v.allocateNew()
        }
        val app = appender(v, c.dt)
        c.values.foreach(app.append)
        app.finish()
      }
  }

  /** The bytes value `v` takes in an Arrow batch (its data; offsets and validity aside): what the
    * byte bound of a native call counts ([[RowGroups]]). Binary and image data by length, strings
    * by their UTF-8 length, numbers by width, arrays and ML Vectors by their elements.
    */
  def bytesOf(v: Any): Long = v match {
    case null                              => 0L
    case b: Array[Byte]                    => b.length.toLong
    case s: String                         => utf8Length(s)
    case _: java.lang.Double               => 8L
    case _: java.lang.Long                 => 8L
    case _: java.lang.Float                => 4L
    case _: java.lang.Integer              => 4L
    case _: java.lang.Short                => 2L
    case _: java.lang.Byte                 => 1L
    case _: java.lang.Boolean              => 1L
    case _: java.math.BigDecimal           => 8L
    case _: BigDecimal                     => 8L
    case d: DenseVector                    => 8L * d.size
    case sv: SparseVector                  => 12L * sv.indices.length + 4L
    case r: Row                            => (0 until r.length).map(i => bytesOf(r.get(i))).sum
    case a: Array[Double]                  => 8L * a.length
    case a: Array[Float]                   => 4L * a.length
    case a: Array[Int]                     => 4L * a.length
    case a: Array[Long]                    => 8L * a.length
    case s: scala.collection.IndexedSeq[_] =>
      if (s.isEmpty) 0L
      else
        s(0) match {
          // A column's elements share a type: numbers by the first one's width.
          case _: java.lang.Number | _: java.lang.Boolean => bytesOf(s(0)) * s.length
          case _                                          => seqBytes(s.iterator, s.length)
        }
    case s: scala.collection.Seq[_] => seqBytes(s.iterator, s.size)
    case a: Array[_]                => seqBytes(a.iterator, a.length)
    case _                          => 8L
  }

  /** Elements' bytes: numbers by the first one's width (a column's elements share a type). */
  private def seqBytes(it: Iterator[Any], size: Int): Long =
    if (size == 0) 0L
    else {
      val first = it.next()
      first match {
        case _: java.lang.Number | _: java.lang.Boolean => bytesOf(first) * size
        case _ => it.foldLeft(bytesOf(first))((sum, x) => sum + bytesOf(x))
      }
    }

  private def utf8Length(s: String): Long = {
    var n = 0L
    var i = 0
    while (i < s.length) {
      val c = s.charAt(i)
      n += (if (c < 0x80) 1 else if (c < 0x800) 2 else if (Character.isSurrogate(c)) 2 else 3)
      i += 1
    }
    n
  }

  private def nullable(t: ArrowType, children: Field*): Field =
    new Field("", FieldType.nullable(t), java.util.Arrays.asList(children: _*))

  private def named(name: String, f: Field): Field =
    new Field(name, f.getFieldType, f.getChildren)

  /** Spark's VectorUDT as Arrow sees it: struct<type: int8, size: int32, indices: list<int32>,
    * values: list<float64>> (type 0 sparse, 1 dense; a dense vector has no size and indices).
    */
  private def vectorStruct: Field = {
    val f64 = new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE)
    nullable(
      ArrowType.Struct.INSTANCE,
      named("type", nullable(new ArrowType.Int(8, true))),
      named("size", nullable(new ArrowType.Int(32, true))),
      named("indices", nullable(ArrowType.List.INSTANCE, named("item", nullable(int32)))),
      named("values", nullable(ArrowType.List.INSTANCE, named("item", nullable(f64))))
    )
  }

  private def int32 = new ArrowType.Int(32, true)

  private[torchspark] def arrowField(name: String, dt: DataType): Field = named(
    name,
    dt match {
      case DoubleType | _: DecimalType =>
        nullable(new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE))
      case FloatType       => nullable(new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE))
      case LongType        => nullable(new ArrowType.Int(64, true))
      case IntegerType     => nullable(int32)
      case ShortType       => nullable(new ArrowType.Int(16, true))
      case ByteType        => nullable(new ArrowType.Int(8, true))
      case BooleanType     => nullable(ArrowType.Bool.INSTANCE)
      case BinaryType      => nullable(ArrowType.Binary.INSTANCE)
      case StringType      => nullable(ArrowType.Utf8.INSTANCE)
      case ArrayType(e, _) => nullable(ArrowType.List.INSTANCE, arrowField("item", e))
      case d if d == SQLDataTypes.VectorType => vectorStruct
      case other                             =>
        throw new IllegalArgumentException(s"column `$name`: ${unsupported(other).orNull}")
    }
  )

  /** Appends row values, in order, to one vector. */
  private abstract class Appender {
    protected var n = 0
    def append(v: Any): Unit
    def finish(): Unit
  }

  private final class Scalars(vector: BaseFixedWidthVector, set: (Int, Any) => Unit)
      extends Appender {
    def append(v: Any): Unit = {
      if (v == null) vector.setNull(n) else set(n, v)
      n += 1
    }
    def finish(): Unit = vector.setValueCount(n)
  }

  /** Fixed-width numbers packed into a little-endian buffer and copied into `vector` at once:
    * Arrow's checked setter per value (bounds, validity bit) topped the bridge's profile on 1M rows
    * of a small tabular model.
    */
  private final class Packed(
      vector: BaseFixedWidthVector,
      width: Int,
      put: (ByteBuffer, Any) => Unit
  ) extends Appender {
    private var buf = ByteBuffer.allocate(width * 1024).order(ByteOrder.LITTLE_ENDIAN)
    private val nulls = new java.util.BitSet()
    def append(v: Any): Unit = {
      if (buf.remaining < width) {
        val bigger = ByteBuffer.allocate(buf.capacity * 2).order(ByteOrder.LITTLE_ENDIAN)
        buf.flip()
        buf = bigger.put(buf)
      }
      if (v == null) { nulls.set(n); buf.position(buf.position() + width) }
      else put(buf, v)
      n += 1
    }
    def finish(): Unit = {
      vector.allocateNew(math.max(n, 1))
      buf.flip()
      vector.getDataBuffer.setBytes(0, buf)
      val valid = Array.fill[Byte]((n + 7) / 8)(-1)
      if (n % 8 != 0) valid(n / 8) = ((1 << (n % 8)) - 1).toByte
      var i = nulls.nextSetBit(0)
      while (i >= 0) {
        valid(i >> 3) = (valid(i >> 3) & ~(1 << (i & 7))).toByte
        i = nulls.nextSetBit(i + 1)
      }
      vector.getValidityBuffer.setBytes(0, valid, 0, valid.length.toLong)
      vector.setValueCount(n)
    }
  }

  private final class Binaries(vector: VarBinaryVector) extends Appender {
    def append(v: Any): Unit = {
      v match {
        case b: Array[Byte] => vector.setSafe(n, b)
        case _              => vector.setNull(n)
      }
      n += 1
    }
    def finish(): Unit = vector.setValueCount(n)
  }

  /** Strings as Arrow Utf8; a null stays null (the native text reader makes it a row error). */
  private final class Strings(vector: VarCharVector) extends Appender {
    def append(v: Any): Unit = {
      v match {
        case s: String => vector.setSafe(n, s.getBytes(java.nio.charset.StandardCharsets.UTF_8))
        case _         => vector.setNull(n)
      }
      n += 1
    }
    def finish(): Unit = vector.setValueCount(n)
  }

  private final class Lists(vector: ListVector, child: Appender) extends Appender {
    def append(v: Any): Unit = {
      vector.startNewValue(n)
      val size = v match {
        case s: scala.collection.Seq[_] => s.foreach(child.append); s.size
        case a: Array[_]                => a.foreach(child.append); a.length
        case _                          => 0
      }
      vector.endValue(n, size)
      // A null: an empty slot (its offsets written) marked invalid.
      if (v == null) BitVectorHelper.unsetBit(vector.getValidityBuffer, n)
      n += 1
    }
    def finish(): Unit = { child.finish(); vector.setValueCount(n) }
  }

  private final class VectorStructs(vector: StructVector) extends Appender {
    private val kind = vector.getChild("type").asInstanceOf[TinyIntVector]
    private val size = vector.getChild("size").asInstanceOf[IntVector]
    private val indices = appender(vector.getChild("indices"), ArrayType(IntegerType))
    private val values = appender(vector.getChild("values"), ArrayType(DoubleType))
    def append(v: Any): Unit = {
      v match {
        case d: DenseVector =>
          vector.setIndexDefined(n)
          kind.setSafe(n, 1)
          size.setNull(n)
          indices.append(null)
          values.append(d.values)
        case s: SparseVector =>
          vector.setIndexDefined(n)
          kind.setSafe(n, 0)
          size.setSafe(n, s.size)
          indices.append(s.indices)
          values.append(s.values)
        case _ =>
          vector.setNull(n)
          kind.setNull(n)
          size.setNull(n)
          indices.append(null)
          values.append(null)
      }
      n += 1
    }
    def finish(): Unit = {
      kind.setValueCount(n); size.setValueCount(n); indices.finish(); values.finish()
      vector.setValueCount(n)
    }
  }

  private def toDouble(v: Any): Double = v match {
    case d: java.math.BigDecimal => d.doubleValue
    case d: BigDecimal           => d.toDouble
    case x                       => x.asInstanceOf[Double]
  }

  private def appender(v: ValueVector, dt: DataType): Appender = (v, dt) match {
    case (x: Float8Vector, _: DecimalType) => new Packed(x, 8, (b, y) => b.putDouble(toDouble(y)))
    case (x: Float8Vector, _)   => new Packed(x, 8, (b, y) => b.putDouble(y.asInstanceOf[Double]))
    case (x: Float4Vector, _)   => new Packed(x, 4, (b, y) => b.putFloat(y.asInstanceOf[Float]))
    case (x: BigIntVector, _)   => new Packed(x, 8, (b, y) => b.putLong(y.asInstanceOf[Long]))
    case (x: IntVector, _)      => new Packed(x, 4, (b, y) => b.putInt(y.asInstanceOf[Int]))
    case (x: SmallIntVector, _) => new Packed(x, 2, (b, y) => b.putShort(y.asInstanceOf[Short]))
    case (x: TinyIntVector, _)  => new Packed(x, 1, (b, y) => b.put(y.asInstanceOf[Byte]))
    case (x: BitVector, _)      =>
      new Scalars(x, (i, y) => x.setSafe(i, if (y.asInstanceOf[Boolean]) 1 else 0))
    case (x: VarBinaryVector, _)          => new Binaries(x)
    case (x: VarCharVector, _)            => new Strings(x)
    case (x: ListVector, ArrayType(e, _)) => new Lists(x, appender(x.getDataVector, e))
    case (x: StructVector, _)             => new VectorStructs(x)
    case (x, _)                           =>
      throw new IllegalStateException(s"no appender for ${x.getClass.getSimpleName} as $dt")
  }

  /** The Spark type of one SQL argument's value (a UDF sees values, not types), or None for null:
    * what [[encode]] needs to send it.
    */
  def typeOfValue(v: Any): Option[DataType] = v match {
    case null                       => None
    case _: Array[Byte]             => Some(BinaryType)
    case _: String                  => Some(StringType)
    case _: Vector                  => Some(SQLDataTypes.VectorType)
    case r: Row if r.schema != null => Some(r.schema)
    case _: java.lang.Double        => Some(DoubleType)
    case _: java.lang.Float         => Some(FloatType)
    case _: java.lang.Long          => Some(LongType)
    case _: java.lang.Integer       => Some(IntegerType)
    case _: java.lang.Short         => Some(ShortType)
    case _: java.lang.Byte          => Some(ByteType)
    case _: java.lang.Boolean       => Some(BooleanType)
    case _: java.math.BigDecimal    => Some(DecimalType.SYSTEM_DEFAULT)
    case s: scala.collection.Seq[_] =>
      Some(
        ArrayType(
          s.iterator.map(typeOfValue).collectFirst { case Some(t) => t }.getOrElse(DoubleType)
        )
      )
    case other =>
      throw new IllegalArgumentException(
        s"a value of ${other.getClass.getName}: $readable"
      )
  }

  /** Per row: the outputs (Spark values, in the result's column order, `error` left out), or the
    * row's error. `types` are the Spark types of the output columns that precede `error`: each
    * output is read as its type ([[reader]]), e.g. a float32 list as an ML Vector or array<double>.
    */
  def decode(bytes: Array[Byte], types: Seq[DataType]): Array[Either[String, Seq[Any]]] =
    ArrowCodec.read(bytes) { root =>
      val outputs = types.size
      val fields = root.getSchema.getFields
      if (fields.size != outputs + 1 || fields.get(outputs).getName != "error")
        throw new InferenceException(
          s"the native result has columns ${(0 until fields.size).map(fields.get(_).getName)}" +
            s", expected $outputs outputs and `error`"
        )
      val getters = Array.tabulate(outputs)(i => reader(root.getVector(i), fields.get(i), types(i)))
      val err = root.getVector(outputs).asInstanceOf[VarCharVector]
      Array.tabulate(root.getRowCount) { i =>
        val out: Either[String, Seq[Any]] =
          if (!err.isNull(i)) Left(new String(err.get(i), "UTF-8"))
          else {
            val values = new Array[Any](outputs)
            var k = 0
            while (k < outputs) { values(k) = getters(k)(i); k += 1 }
            Right(values.toSeq)
          }
        out
      }
    }

  /** Element `i` of a float32 or float64 vector as a double. */
  private def doubles(v: ValueVector, f: Field): Int => Double = v match {
    case d: Float8Vector => i => d.get(i)
    case d: Float4Vector => i => d.get(i).toDouble
    case other           =>
      throw new InferenceException(
        s"output `${f.getName}`: an ML Vector reads float32 or float64, not ${other.getClass}"
      )
  }

  /** Row `i` of the native column `v` (Arrow field `f`) as a Spark value of type `dt`: the type the
    * native field maps to ([[ModelSchema.sparkType]]), or where a preset asks for another one: a
    * float32 or float64 list as an ML Vector, a float32 as a double (and back), inside arrays and
    * structs too (a struct's fields by name).
    */
  private def reader(v: ValueVector, f: Field, dt: DataType): Int => Any = (v, dt) match {
    case (l: ListVector, d) if d == SQLDataTypes.VectorType =>
      val get = doubles(l.getDataVector, f.getChildren.get(0))
      i =>
        if (l.isNull(i)) null
        else {
          val (s, e) = (l.getElementStartIndex(i), l.getElementEndIndex(i))
          val out = new Array[Double](e - s)
          var j = s
          while (j < e) { out(j - s) = get(j); j += 1 }
          Vectors.dense(out)
        }
    case (x: Float8Vector, FloatType)  => i => if (x.isNull(i)) null else x.get(i).toFloat
    case (x: Float4Vector, DoubleType) => i => if (x.isNull(i)) null else x.get(i).toDouble
    case (x: Float8Vector, _)          => i => if (x.isNull(i)) null else x.get(i)
    case (x: Float4Vector, _)          => i => if (x.isNull(i)) null else x.get(i)
    case (x: BigIntVector, _)          => i => if (x.isNull(i)) null else x.get(i)
    case (x: IntVector, _)             => i => if (x.isNull(i)) null else x.get(i)
    case (x: SmallIntVector, _)        => i => if (x.isNull(i)) null else x.get(i)
    case (x: TinyIntVector, _)         => i => if (x.isNull(i)) null else x.get(i)
    case (x: BitVector, _)             => i => if (x.isNull(i)) null else x.get(i) == 1
    case (x: VarBinaryVector, _)       => i => if (x.isNull(i)) null else x.get(i)
    case (x: VarCharVector, _) => i => if (x.isNull(i)) null else new String(x.get(i), "UTF-8")
    case (l: ListVector, _)    =>
      val c = f.getChildren.get(0)
      val element = dt match {
        case ArrayType(e, _) => e
        case _               => ModelSchema.sparkType(c)
      }
      val child = reader(l.getDataVector, c, element)
      i =>
        if (l.isNull(i)) null
        else {
          val (s, e) = (l.getElementStartIndex(i), l.getElementEndIndex(i))
          val out = new Array[Any](e - s)
          var j = s
          while (j < e) { out(j - s) = child(j); j += 1 }
          out.toSeq
        }
    case (x: StructVector, _) =>
      val cs = f.getChildren
      val natives = (0 until cs.size).map(cs.get)
      // The Spark struct's fields in its order; the native field of each name.
      val targets = dt match {
        case st: StructType => st.fields.toSeq.map(t => t.name -> t.dataType)
        case _              => natives.map(c => c.getName -> ModelSchema.sparkType(c))
      }
      val children = targets.map { case (name, t) =>
        val c = natives.find(_.getName == name).getOrElse {
          throw new InferenceException(
            s"output `${f.getName}`: the native struct has no field `$name` (its fields: " +
              s"${natives.map(_.getName).mkString(", ")})"
          )
        }
        reader(x.getChild(name), c, t)
      }
      i => if (x.isNull(i)) null else Row.fromSeq(children.map(_(i)))
    case (x, _) =>
      throw new InferenceException(
        s"output `${f.getName}`: cannot read Arrow ${f.getType} (${x.getClass}) as ${dt.simpleString}"
      )
  }
}
