package dev.torchspark

import java.io.{File, FileNotFoundException, IOException, ObjectInputStream, ObjectOutputStream}
import java.io.RandomAccessFile
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, StandardCopyOption}
import java.security.MessageDigest
import java.util.concurrent.ConcurrentHashMap

import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.{FileStatus, Path => HPath}
import org.apache.spark.sql.SparkSession

/** Where a model comes from: a local path (or a `--files` name), or a Hadoop FileSystem URI
  * (`hdfs://`, `abfs://`, `wasbs://`, `s3a://`, ...) that each executor copies once into a node
  * cache before loading the local copy.
  *
  * Built on the driver, where a missing remote model is reported before any job starts; shipped to
  * the executors with the session's Hadoop configuration (the storage credentials live there).
  */
final class ModelSource private (val path: String, conf: ModelSource.SerializableConf)
    extends Serializable {

  /** True when the model lives in cluster storage rather than on the node. */
  def isRemote: Boolean = ModelSource.isRemote(path)

  /** The local model file to load: resolved on a node, fetched into the cache when remote. */
  def localPath(): String =
    if (isRemote) ModelSource.fetch(path, conf.value) else NativeRunner.resolveModel(path)

  /** Checks that the model and its spec exist; driver-side, before a job starts. */
  def check(): Unit = if (isRemote) ModelSource.statBoth(path, conf.value)
}

object ModelSource {

  /** A source for `path`, with `spark`'s Hadoop configuration for remote URIs. */
  def apply(spark: SparkSession, path: String): ModelSource = {
    new ModelSource(path, new SerializableConf(if (isRemote(path)) hadoopConf(spark) else null))
  }

  /** The context's Hadoop configuration with the session's settings over it, as Spark SQL's own
    * file sources see it (`spark.hadoop.*` and Hadoop keys set on the session).
    */
  def hadoopConf(spark: SparkSession): Configuration = {
    val c = new Configuration(spark.sparkContext.hadoopConfiguration)
    spark.conf.getAll.foreach { case (k, v) =>
      if (k.startsWith("spark.hadoop.")) c.set(k.stripPrefix("spark.hadoop."), v)
      else if (!k.startsWith("spark.")) c.set(k, v)
    }
    c
  }

  /** A URI with a scheme other than `file:` (a bare name or a local path is not remote). */
  def isRemote(path: String): Boolean = {
    val i = path.indexOf("://")
    i > 1 && !path.startsWith("file:") && path
      .substring(0, i)
      .forall(c => c.isLetterOrDigit || c == '+' || c == '-' || c == '.')
  }

  /** The spec beside a model: `model.pt` → `model.json`. */
  def specOf(path: String): String = {
    val slash = path.lastIndexOf('/')
    val dot = path.lastIndexOf('.')
    (if (dot > slash) path.substring(0, dot) else path) + ".json"
  }

  /** Hadoop's Configuration is Writable but not Serializable. */
  final class SerializableConf(@transient var value: Configuration) extends Serializable {
    private def writeObject(out: ObjectOutputStream): Unit = {
      out.defaultWriteObject()
      out.writeBoolean(value != null)
      if (value != null) value.write(out)
    }
    private def readObject(in: ObjectInputStream): Unit = {
      in.defaultReadObject()
      value = if (in.readBoolean()) { val c = new Configuration(false); c.readFields(in); c }
      else null
    }
  }

  private def stat(uri: String, what: String, conf: Configuration): FileStatus = {
    val p = new HPath(uri)
    try p.getFileSystem(conf).getFileStatus(p)
    catch {
      case e: FileNotFoundException =>
        throw new ModelLoadException(s"$what $uri not found", e)
      case e: IOException =>
        throw new ModelLoadException(
          s"cannot reach $what $uri on host ${NativeLoader.hostName()}: $e",
          e
        )
      case e: RuntimeException => // e.g. no FileSystem for the scheme, bad authority
        throw new ModelLoadException(s"cannot open $what $uri: $e", e)
    }
  }

  private def statBoth(uri: String, conf: Configuration): (FileStatus, FileStatus) = {
    val model = stat(uri, "model", conf)
    if (!model.isFile) throw new ModelLoadException(s"model $uri is not a file")
    (model, stat(specOf(uri), "model spec (it sits beside the model)", conf))
  }

  /** The node's model cache: `TORCHSPARK_CACHE_DIR`, `-Dtorchspark.cache.dir`, else a per-user
    * folder in /tmp, shared by every executor on the node (YARN gives each container its own
    * java.io.tmpdir, which would defeat the sharing).
    */
  def cacheDir(): File = {
    val configured = Option(System.getProperty("torchspark.cache.dir"))
      .orElse(Option(System.getenv("TORCHSPARK_CACHE_DIR")))
      .filter(_.nonEmpty)
    configured.map(new File(_)).getOrElse {
      val tmp = new File("/tmp")
      val base =
        if (tmp.isDirectory && tmp.canWrite) tmp else new File(System.getProperty("java.io.tmpdir"))
      new File(base, s"torchspark-${System.getProperty("user.name")}/models")
    }
  }

  // Threads of one JVM must not take the same file lock twice (OverlappingFileLockException).
  private val jvmLocks = new ConcurrentHashMap[String, Object]()

  /** Copies `uri` and its spec into the cache once per (URI, length, modification time) per node,
    * under a file lock (several executors can share a node), and returns the local model path.
    */
  def fetch(uri: String, conf: Configuration): String = {
    val (model, spec) = statBoth(uri, conf)
    val key = hex(
      Seq(uri, model.getLen, model.getModificationTime, spec.getLen, spec.getModificationTime)
        .mkString("\n")
    )
    val dir = new File(cacheDir(), key)
    val name = new HPath(uri).getName
    val local = new File(dir, name)
    val done = new File(dir, ".complete")
    if (done.isFile) return local.getAbsolutePath
    val monitor = jvmLocks.computeIfAbsent(key, _ => new Object)
    monitor.synchronized {
      try {
        Files.createDirectories(dir.toPath)
        val ch = new RandomAccessFile(new File(dir, ".lock"), "rw").getChannel
        try {
          val lock = ch.lock()
          try {
            if (!done.isFile) {
              copy(model.getPath, local, conf, uri)
              copy(spec.getPath, new File(dir, specOf(name)), conf, specOf(uri))
              Files.write(done.toPath, uri.getBytes(StandardCharsets.UTF_8))
            }
          } finally lock.release()
        } finally ch.close()
      } catch {
        case e: TorchSparkException => throw e
        case e: IOException         =>
          throw new ModelLoadException(
            s"cannot copy model $uri into the node cache $dir on host ${NativeLoader.hostName()}: $e",
            e
          )
      }
    }
    local.getAbsolutePath
  }

  private def copy(src: HPath, dest: File, conf: Configuration, uri: String): Unit = {
    val tmp = File.createTempFile(dest.getName, ".part", dest.getParentFile)
    try {
      val in =
        try src.getFileSystem(conf).open(src)
        catch {
          case e: IOException => throw new ModelLoadException(s"cannot read $uri: $e", e)
        }
      try Files.copy(in, tmp.toPath, StandardCopyOption.REPLACE_EXISTING)
      finally in.close()
      Files.move(
        tmp.toPath,
        dest.toPath,
        StandardCopyOption.REPLACE_EXISTING,
        StandardCopyOption.ATOMIC_MOVE
      )
    } finally { tmp.delete(); () }
  }

  private def hex(s: String): String =
    MessageDigest
      .getInstance("SHA-256")
      .digest(s.getBytes(StandardCharsets.UTF_8))
      .take(12)
      .map(b => f"${b & 0xff}%02x")
      .mkString
}
