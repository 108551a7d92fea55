package dev.torchspark.sql

import scala.util.Try

import org.apache.spark.SparkEnv
import org.apache.spark.sql.{SparkSession, SparkSessionExtensions}
import org.apache.spark.sql.catalyst.FunctionIdentifier
import org.apache.spark.sql.catalyst.expressions.{Expression, ExpressionInfo}

import dev.torchspark.{ConfigException, Logs, TorchSpark}

/** SQL functions from the application's configuration (docs/sql-functions.md):
  * `spark.torchspark.functions.<name>=<model path or URI>` and
  * `spark.torchspark.functions.<name>.<option>` (`device`, `numThreads`, `engine`: what
  * [[TorchSpark.register]] takes), injected by [[dev.torchspark.TorchSparkExtensions]] into every
  * session it builds, so that `spark-sql`, the Thrift server and Spark Connect clients call
  * `name(col)` with nothing else.
  *
  * The configuration is checked when the session is built (a bad key fails it, naming the key); the
  * model is resolved, checked and loaded at the function's first call in the application (as
  * `TorchSpark.register` would at registration), so a server starts without reading any model.
  */
object ConfFunctions {
  val Prefix = "spark.torchspark.functions."

  /** The options a function takes, with their defaults (TorchSpark.register's). */
  val Options: Seq[String] = Seq("device", "numThreads", "engine")

  /** One configured function. */
  final case class Entry(
      name: String,
      modelPath: String,
      device: String,
      numThreads: Int,
      engine: String
  ) {
    def key: String = Prefix + name
  }

  private val Name = "[A-Za-z_][A-Za-z0-9_]*".r

  /** The functions `conf` configures, by name.
    * @throws ConfigException
    *   naming the key: a name that is not a SQL identifier, an empty model path, an option of a
    *   function whose model is not set, an unknown option or a bad option value
    */
  def parse(conf: Iterable[(String, String)]): Seq[Entry] = {
    val ours = conf.filter(_._1.startsWith(Prefix)).toMap
    val (bases, options) = ours.partition { case (k, _) => !k.stripPrefix(Prefix).contains('.') }
    def bad(key: String, why: String) = new ConfigException(s"$key: $why (docs/sql-functions.md)")
    options.keys.foreach { key =>
      val Array(name, option) = key.stripPrefix(Prefix).split("\\.", 2)
      if (!bases.contains(Prefix + name))
        throw bad(key, s"an option of SQL function `$name`, but ${Prefix + name} is not set")
      if (!Options.contains(option))
        throw bad(key, s"unknown option `$option` (options: ${Options.mkString(", ")})")
    }
    bases.toSeq.sortBy(_._1).map { case (key, value) =>
      val name = key.stripPrefix(Prefix)
      if (!Name.pattern.matcher(name).matches())
        throw bad(key, s"`$name` is not a SQL function name (letters, digits and _)")
      if (value.trim.isEmpty) throw bad(key, "the model path or URI is empty")
      def opt(o: String) = ours.get(s"$key.$o").map(_.trim)
      val threads = opt("numThreads").map { v =>
        Try(v.toInt).toOption
          .filter(_ >= 0)
          .getOrElse(throw bad(s"$key.numThreads", s"`$v` is not a thread count (>= 0)"))
      }
      val engine = opt("engine").getOrElse("shared")
      if (engine != "shared" && engine != "per-task")
        throw bad(s"$key.engine", s"`$engine` is not an engine (shared or per-task)")
      val device = opt("device").getOrElse("cpu")
      if (device.isEmpty) throw bad(s"$key.device", "the device is empty")
      Entry(name, value.trim, device, threads.getOrElse(1), engine)
    }
  }

  /** Injects the functions of the application's configuration (the running SparkContext's: the
    * extension is applied when a session is built on it) into `ext`. Without a running context
    * (`withExtensions` on a builder) there is no configuration, and nothing is injected.
    */
  def inject(ext: SparkSessionExtensions): Unit = {
    val conf = Option(SparkEnv.get).map(_.conf.getAll.toSeq).getOrElse(Nil)
    val entries = parse(conf)
    val names = entries.map(_.name.toLowerCase(java.util.Locale.ROOT)).toSet
    entries.foreach { e =>
      val resolved = new Resolved(e)
      Logs.model.info(s"SQL function ${e.name} from ${e.key}=${e.modelPath}")
      ext.injectFunction((FunctionIdentifier(e.name), info(e, e.name), resolved.call(0)))
      // An image classifier's features function, as TorchSpark.register gives it.
      val features = s"${e.name}_features"
      if (!names.contains(features.toLowerCase(java.util.Locale.ROOT)))
        ext.injectFunction((FunctionIdentifier(features), info(e, features), resolved.call(1)))
    }
  }

  private def info(e: Entry, name: String): ExpressionInfo =
    new ExpressionInfo(
      classOf[TorchCall].getName,
      null,
      name,
      s"$name(...) - the model ${e.modelPath} (from ${e.key})",
      "",
      "",
      "",
      "",
      "",
      "",
      "scala_udf"
    )

  /** An entry's functions, made at its first call in this application and kept. */
  private final class Resolved(e: Entry) {
    @volatile private var made: Seq[TorchFunction] = _

    private def functions(): Seq[TorchFunction] = synchronized {
      if (made == null) {
        val spark = SparkSession.active
        // The batched plan, as TorchSpark.register installs it (the extension injects it too).
        made =
          try TorchSpark.functions(spark, e.name, e.modelPath, e.device, e.numThreads, e.engine)
          catch {
            case x: Exception =>
              throw new ConfigException(
                s"SQL function ${e.name} (${e.key}=${e.modelPath}): ${x.getMessage}",
                x
              )
          }
      }
      made
    }

    /** The builder of the entry's `i`th function: 0 the function, 1 `_features`. */
    def call(i: Int): Seq[Expression] => Expression = args => {
      val fns = functions()
      if (i >= fns.size)
        throw new ConfigException(
          s"${e.name}_features: ${e.key}=${e.modelPath} is not an image classifier (only an " +
            s"image classifier has a features function); call ${e.name}(...)"
        )
      TorchCall(fns(i), args)
    }
  }
}
