package dev.torchspark.sql

import scala.collection.mutable

import org.apache.spark.sql.catalyst.expressions._
import org.apache.spark.sql.catalyst.expressions.aggregate.AggregateExpression
import org.apache.spark.sql.catalyst.plans.logical.{
  Filter,
  LogicalPlan,
  Project,
  Subquery,
  UnaryNode
}
import org.apache.spark.sql.catalyst.rules.Rule

/** Evaluates `calls` over `child`'s rows a batch at a time and appends their results as
  * `resultAttrs` (one per call, in order): the logical twin of Spark's `BatchEvalPython`.
  */
case class TorchEval(calls: Seq[TorchCall], resultAttrs: Seq[Attribute], child: LogicalPlan)
    extends UnaryNode {

  override def output: Seq[Attribute] = child.output ++ resultAttrs
  override def producedAttributes: AttributeSet = AttributeSet(resultAttrs)
  override def simpleString(maxFields: Int): String = TorchEval.describe(calls, resultAttrs)

  override protected def withNewChildInternal(newChild: LogicalPlan): TorchEval =
    copy(child = newChild)
}

object TorchEval {

  /** The rows per native call of a node: the largest batch of its functions ("auto" for 0). */
  def batchText(fns: Seq[TorchFunction]): String =
    if (fns.exists(_.batchSize == 0)) "auto" else fns.map(_.batchSize).max.toString

  /** `TorchEval [m(c#1)], [m#7], engine=shared, batch=64`: EXPLAIN's line for the node. */
  def describe(calls: Seq[TorchCall], attrs: Seq[Attribute]): String = {
    val fns = calls.map(_.fn)
    s"TorchEval ${calls.mkString("[", ", ", "]")}, ${attrs.mkString("[", ", ", "]")}, " +
      s"engine=${fns.map(_.engine).distinct.mkString("|")}, batch=${batchText(fns)}"
  }
}

/** Moves model calls out of any operator into a [[TorchEval]] under it: a port of Spark's
  * `ExtractPythonUDFs.extract` (apache/spark, sql/core .../python/ExtractPythonUDFs.scala).
  *
  * Calls are deduplicated by semantic equality, so `m(c).label` and `m(c).probability` are one call
  * and one pass. A call whose arguments hold a nested call, an aggregate, a window function or a
  * generator, or read more than one child, stays where it is and runs row by row
  * ([[TorchCall.eval]]); a nested call is extracted on the next pass. Idempotent.
  */
object ExtractTorchCalls extends Rule[LogicalPlan] {

  override def apply(plan: LogicalPlan): LogicalPlan = plan match {
    // Spark does not rewrite a correlated subquery's plan in place (ExtractPythonUDFs does the same).
    case s: Subquery if s.correlated => plan
    case _                           =>
      plan
        .transformDown { case p @ Project(_, f: Filter) => shareWithFilter(p, f) }
        .transformUp {
          case e: TorchEval => e
          case p            => extract(p)
        }
  }

  /** `SELECT m(c).label ... WHERE m(c).prediction = 3`: the Filter's calls go under it and the
    * Project above reads their results (a Filter passes every column up), so the call is one pass
    * rather than one below the Filter and one above it.
    */
  private def shareWithFilter(p: Project, f: Filter): LogicalPlan = {
    val calls = distinct(collectCalls(f)).filter(_.references.subsetOf(f.child.outputSet))
    if (!collectCalls(p).exists(c => calls.exists(_.semanticEquals(c)))) return p
    val attrs = calls.map(c => AttributeReference(c.fn.name, c.dataType, nullable = true)())
    val rewrite = (e: Expression) =>
      e.transform { case c: TorchCall =>
        calls.indexWhere(_.semanticEquals(c)) match {
          case -1 => c
          case i  => attrs(i)
        }
      }
    val list = p.projectList.map(e => rewrite(e).asInstanceOf[NamedExpression])
    Project(list, Filter(rewrite(f.condition), TorchEval(calls, attrs, f.child)))
  }

  private def distinct(calls: Seq[TorchCall]): Seq[TorchCall] = {
    val unique = mutable.ArrayBuffer.empty[TorchCall]
    calls.foreach(c => if (!unique.exists(_.semanticEquals(c))) unique += c)
    unique.toSeq
  }

  private def movable(e: Expression): Boolean = !e.exists {
    case _: TorchCall | _: AggregateExpression | _: WindowExpression | _: Generator => true
    case _: SubqueryExpression                                                      => true
    case _                                                                          => false
  }

  /** The calls in `plan`'s own expressions whose arguments can be evaluated below it. */
  private def collectCalls(plan: LogicalPlan): Seq[TorchCall] =
    plan.expressions.flatMap(_.collect {
      case c: TorchCall if c.children.forall(movable) && c.deterministic => c
    })

  private def extract(plan: LogicalPlan): LogicalPlan = {
    if (plan.children.isEmpty) return plan
    val unique = mutable.ArrayBuffer.empty[TorchCall] ++ distinct(collectCalls(plan))
    if (unique.isEmpty) return plan
    val replaced = mutable.ArrayBuffer.empty[(TorchCall, Attribute)]
    val newChildren = plan.children.map { child =>
      val here = unique.filter(c => c.references.subsetOf(child.outputSet)).toSeq
      unique --= here
      if (here.isEmpty) child
      else {
        val attrs = here.map(c => AttributeReference(c.fn.name, c.dataType, nullable = true)())
        replaced ++= here.zip(attrs)
        TorchEval(here, attrs, child)
      }
    }
    if (replaced.isEmpty) return plan
    val rewritten = plan.withNewChildren(newChildren).transformExpressions { case c: TorchCall =>
      replaced.find(_._1.semanticEquals(c)).map(_._2).getOrElse(c)
    }
    // Nested calls (m(n(x))) are now over an attribute: extract them too.
    val newPlan = extract(rewritten)
    // The results are extra columns: an operator that passes its child's columns through (a
    // Filter) would show them.
    if (newPlan.output != plan.output) Project(plan.output, newPlan) else newPlan
  }
}
