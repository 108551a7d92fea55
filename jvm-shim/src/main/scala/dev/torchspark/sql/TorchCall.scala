package dev.torchspark.sql

import org.apache.spark.sql.catalyst.CatalystTypeConverters
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.analysis.TypeCheckResult
import org.apache.spark.sql.catalyst.expressions.Expression
import org.apache.spark.sql.catalyst.expressions.codegen.CodegenFallback
import org.apache.spark.sql.types.DataType

/** A call of a registered model in a query: `classify_image(content)`, `diabetes(x)`.
  *
  * [[ExtractTorchCalls]] moves every call it can reach into a [[TorchEval]] node that runs them a
  * batch of rows at a time; `eval` is the row-by-row fallback for the calls it cannot reach (e.g.
  * over an aggregate's result), with the same results and error strings.
  */
case class TorchCall(fn: TorchFunction, children: Seq[Expression])
    extends Expression
    with CodegenFallback {

  override def dataType: DataType = fn.resultType
  override def nullable: Boolean = true
  override def prettyName: String = fn.name
  override def toString: String = s"${fn.name}(${children.mkString(", ")})"

  override def checkInputDataTypes(): TypeCheckResult =
    if (children.size != fn.arity)
      TypeCheckResult.TypeCheckFailure(
        s"${fn.name} takes ${fn.arity} argument(s), got ${children.size}"
      )
    else
      children.zipWithIndex
        .flatMap { case (c, i) => fn.checkArgument(i, c.dataType) }
        .headOption
        .map(TypeCheckResult.TypeCheckFailure(_))
        .getOrElse(TypeCheckResult.TypeCheckSuccess)

  @transient private lazy val toScala =
    children.map(c => CatalystTypeConverters.createToScalaConverter(c.dataType))
  @transient private lazy val toCatalyst =
    CatalystTypeConverters.createToCatalystConverter(dataType)

  override def eval(input: InternalRow): Any = {
    val args = children.zip(toScala).map { case (c, convert) => convert(c.eval(input)) }
    toCatalyst(fn.evalRow(args, children.map(_.dataType)))
  }

  override protected def withNewChildrenInternal(
      newChildren: IndexedSeq[Expression]
  ): TorchCall = copy(children = newChildren)
}
