package dev.torchspark

import org.apache.spark.ml.Transformer
import org.apache.spark.ml.linalg.{SQLDataTypes, Vectors}
import org.apache.spark.ml.param._
import org.apache.spark.ml.util.{DefaultParamsReadable, DefaultParamsWritable, Identifiable}
import org.apache.spark.sql.{DataFrame, Dataset}
import org.apache.spark.sql.types._

/** Embeds images with the spec's featurize output (a method such as `features`, or one element of
  * forward's tuple) into `outputCol`, an ML Vector that Spark ML estimators train on directly.
  */
class ImageFeaturizer(override val uid: String)
    extends Transformer
    with TorchSparkParams
    with DefaultParamsWritable {

  def this() = this(Identifiable.randomUID("ImageFeaturizer"))

  final val outputCol: Param[String] =
    new Param[String](this, "outputCol", "the embedding (ML Vector)")

  setDefault(outputCol -> "features")

  def setOutputCol(v: String): this.type = set(outputCol, v)

  def getOutputCol: String = $(outputCol)

  @transient private var lastMetrics: TorchSparkMetrics = _

  /** Counters of the last `transform` (filled as its actions run). */
  def metrics: TorchSparkMetrics = lastMetrics

  override def transformSchema(schema: StructType): StructType = {
    require(isDefined(modelPath), "ImageFeaturizer: set modelPath")
    require(isDefined(inputCol), "ImageFeaturizer: set inputCol")
    require(
      schema.fieldNames.contains(getInputCol),
      s"ImageFeaturizer: no input column `$getInputCol`"
    )
    InputKind.of(getInputCol, schema(getInputCol).dataType)
    val out = Seq(StructField(getOutputCol, SQLDataTypes.VectorType)) ++
      (if (getHandleInvalid == "keep") Seq(StructField(getErrorCol, StringType)) else Nil)
    out.foreach { f =>
      require(
        !schema.fieldNames.contains(f.name),
        s"ImageFeaturizer: column `${f.name}` already exists"
      )
    }
    StructType(schema.fields ++ out)
  }

  override def transform(dataset: Dataset[_]): DataFrame = {
    val schema = transformSchema(dataset.schema, logging = true)
    val df = dataset.toDF()
    val metrics = TorchSparkMetrics(df.sparkSession.sparkContext, uid)
    lastMetrics = metrics
    val decode = (bytes: Array[Byte]) =>
      ArrowCodec.decodeFeatures(bytes).map[Either[String, Seq[Any]]] {
        case (_, error) if error != null => Left(error)
        case (f, _)                      => Right(Seq(Vectors.dense(f)))
      }
    NativeRunner.transform(df, this, schema, metrics, NativeBridge.featurize, decode, Seq(null), "")
  }

  override def copy(extra: ParamMap): ImageFeaturizer = defaultCopy(extra)
}

object ImageFeaturizer extends DefaultParamsReadable[ImageFeaturizer]
