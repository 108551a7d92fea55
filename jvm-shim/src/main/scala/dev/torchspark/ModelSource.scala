package dev.torchspark

import java.io.{File, FileNotFoundException, IOException, ObjectInputStream, ObjectOutputStream}
import java.io.RandomAccessFile
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, LinkOption, StandardCopyOption}
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

  /** The text of the spec beside the model, read from cluster storage for a remote model, else
    * beside the local (or `--files`) model that this JVM sees.
    * @throws ModelLoadException
    *   the model is not found here
    * @throws ModelSpecException
    *   its spec cannot be read
    */
  def specText(): String = {
    val spec = specPath()
    val bytes =
      if (isRemote) {
        // Stat'ed first: a model that is missing, refused or unreachable is named as such.
        val (_, status) = ModelSource.statBoth(path, conf.value)
        ModelSource.readAll(status.getPath, conf.value, spec)
      } else
        try Files.readAllBytes(new File(spec).toPath)
        catch {
          case e: IOException =>
            throw new ModelSpecException(s"model spec $spec: cannot read: $e", e)
        }
    new String(bytes, StandardCharsets.UTF_8)
  }

  /** The spec's path or URI as this JVM reads it (beside the resolved model). */
  def specPath(): String =
    ModelSource.specOf(if (isRemote) path else NativeRunner.resolveModel(path))

  /** The inputs and the outputs `preset` selects of this model's spec, described natively
    * ([[ModelSchema.of]]); errors name the spec file.
    */
  def describe(preset: String): ModelSchema = ModelSchema.of(specText(), preset, specPath())

  /** Checks that the model, its spec and the tokenizer files the spec names exist; driver-side,
    * before a job starts.
    */
  def check(): Unit = if (isRemote) {
    val (_, spec) = ModelSource.statBoth(path, conf.value)
    val specBytes = ModelSource.readAll(spec.getPath, conf.value, ModelSource.specOf(path))
    ModelSource.statTokenizers(
      path,
      ModelSource.tokenizersOf(specBytes, ModelSource.specOf(path)),
      conf.value
    )
    ()
  }
}

object ModelSource {

  /** A source for `path`, with `spark`'s Hadoop configuration for remote URIs; an MLflow model URI
    * (`models:/`, `runs:/`) is resolved on the driver to its version's model file.
    * @throws ModelLoadException
    *   on the driver, before any job, for a URI no copy can be checked against (see
    *   [[refuseUnverifiable]])
    */
  def apply(spark: SparkSession, path: String): ModelSource = {
    // An MLflow URI is read as the file it resolves to (once per transform: MlflowResolver.once).
    val p =
      if (MlflowResolver.isMlflowUri(path)) MlflowResolver.resolve(spark, path).modelPath
      else path
    try refuseUnverifiable(p)
    catch { case e: ModelLoadException => Logs.model.warn(e.getMessage); throw e }
    val remote = isRemote(p)
    // Once or twice per transform or registration, on the driver.
    if (remote)
      Logs.model.info(s"model $p: cluster storage, fetched once per node into the node cache")
    else Logs.model.debug(s"model $p: a local path (or a --files name), read on each node")
    new ModelSource(p, new SerializableConf(if (remote) hadoopConf(spark) else null))
  }

  /** Schemes whose servers give no reliable length or version that a node-cache copy could be
    * checked against (Hadoop's HTTP file system reports length -1); Python's `ship_model` refuses
    * the same (`torchspark.cluster.UNVERIFIABLE_SCHEMES`).
    */
  val unverifiableSchemes: Set[String] = Set("http", "https", "ftp")

  private def refusal(uri: String, why: String) = new ModelLoadException(
    s"model $uri: $why; copy the model and its spec into cluster storage (hdfs://, s3a://, " +
      "abfs://, gs://) or onto every node, and pass that path"
  )

  /** Refuses `uri` when it is read over http(s) or ftp, naming it and what to do instead. */
  def refuseUnverifiable(uri: String): Unit = {
    val i = uri.indexOf("://")
    val scheme = if (i > 0) uri.substring(0, i).toLowerCase(java.util.Locale.ROOT) else ""
    if (unverifiableSchemes.contains(scheme))
      throw refusal(
        uri,
        s"torchspark does not read models over $scheme:// (a copy could not be checked against " +
          "it: such servers give no reliable length or version)"
      )
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

  /** The spec beside a model, `model.pt` → `model.json`: the path's last name (trailing `/`
    * ignored) loses its extension, from its last `.` unless that `.` starts the name (`.pt` →
    * `.pt.json`), and gains `.json`. The native loader (`ModelSpec::default_path`) and Python
    * (`spec_path`) apply the same rule; tests/fixtures/spec_paths.json pins all three.
    */
  def specOf(path: String): String = {
    var end = path.length
    while (end > 0 && path.charAt(end - 1) == '/') end -= 1
    val p = path.substring(0, end)
    val name = p.lastIndexOf('/') + 1
    val dot = p.lastIndexOf('.')
    (if (dot > name) p.substring(0, dot) else p) + ".json"
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
    refuseUnverifiable(uri)
    val model = stat(uri, "model", conf)
    if (!model.isFile) throw new ModelLoadException(s"model $uri is not a file")
    // The node cache holds its copy to the source's length (and mtime): without one, nothing
    // could tell a torn or substituted copy from the real thing.
    if (model.getLen < 0)
      throw refusal(
        uri,
        s"its file system (${model.getPath.toUri.getScheme}) reports no length, so the node " +
          "cache could not check a copy against it"
      )
    (model, stat(specOf(uri), "model spec (it sits beside the model)", conf))
  }

  /** The node's model cache: `-Dtorchspark.cache.dir`, `TORCHSPARK_CACHE_DIR`, else a per-user
    * folder in /tmp, shared by every executor of this user on the node (YARN gives each container
    * its own java.io.tmpdir, which would defeat the sharing). Not created or checked here: see
    * [[privateCacheDir]].
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

  private val cacheWhat = "the torchspark model cache"

  private def cacheRemedy(dir: File): String =
    s"Remove it if it is not yours (or ask root to), or set TORCHSPARK_CACHE_DIR (or " +
      s"-Dtorchspark.cache.dir) on the executors to a directory that only this user can write " +
      s"(mode 0700); a directory of this user is fixed with `chmod go-w $dir`"

  /** [[cacheDir]], created with mode 0700 when missing, and checked: this user's, not writable by
    * group or others, and no ancestor writable by group or others unless sticky (see
    * [[PrivateDir]]).
    * @throws ModelLoadException
    *   naming the directory, its owner and mode, and what to do
    */
  def privateCacheDir(): File = {
    val dir = cacheDir()
    // The default's per-user folder first: whoever owns /tmp/torchspark-<user> could rename
    // `models` inside it, so it must pass the same rule (another user may have made it first).
    val parent = dir.getParentFile
    if (parent != null && parent.getName == s"torchspark-${System.getProperty("user.name")}")
      PrivateDir.ensure(parent.toPath, cacheWhat, cacheRemedy(parent))
    PrivateDir.ensure(dir.toPath, cacheWhat, cacheRemedy(dir)).toFile
  }

  // Threads of one JVM must not take the same file lock twice (OverlappingFileLockException).
  private val jvmLocks = new ConcurrentHashMap[String, Object]()

  /** The cache entry of one version of a model: a hash of its URI and the lengths and modification
    * times of the model, its spec and the spec's tokenizer files. Anyone can compute it, so it is a
    * name, never a proof: what is found there is checked against the source before it is used.
    */
  def cacheKey(
      uri: String,
      model: FileStatus,
      spec: FileStatus,
      tokenizers: Seq[FileStatus] = Nil
  ): String =
    hex(
      (Seq(uri, model.getLen, model.getModificationTime, spec.getLen, spec.getModificationTime) ++
        tokenizers.flatMap(t => Seq(t.getPath.getName, t.getLen, t.getModificationTime)))
        .mkString("\n")
    )

  /** A tokenizer file a text input of the spec names (`tokenizer`, a plain file name beside the
    * spec) and its `tokenizer_sha256` pin, if any.
    */
  private[torchspark] final case class TokenizerFile(name: String, pin: Option[String])

  /** The tokenizer files of the spec's text inputs, in order, each once.
    * @throws ModelSpecException
    *   the spec is not JSON, or a `tokenizer` is not a plain file name (it is cached beside the
    *   model under that name)
    */
  private[torchspark] def tokenizersOf(
      specBytes: Array[Byte],
      specUri: String
  ): Seq[TokenizerFile] = {
    val root =
      try new com.fasterxml.jackson.databind.ObjectMapper().readTree(specBytes)
      catch {
        case e: IOException =>
          throw new ModelSpecException(s"model spec $specUri is not valid JSON: ${e.getMessage}", e)
      }
    val inputs = Option(root).flatMap(r => Option(r.get("inputs"))).filter(_.isArray)
    val found = inputs.toSeq.flatMap { arr =>
      (0 until arr.size).flatMap { i =>
        val d = arr.get(i)
        Option(d.get("tokenizer")).filter(_.isTextual).map(_.asText).map { name =>
          // The native loader's rule (spec/general.rs) and Python's (cluster.py).
          if (
            name.isEmpty || name == "." || name.contains('/') || name.contains('\\') ||
            name.contains("..")
          )
            throw new ModelSpecException(
              s"model spec $specUri: inputs[$i].tokenizer `$name` must be a file name in the " +
                "spec's folder (no `/` or `..`): the tokenizer ships with the model"
            )
          TokenizerFile(
            name,
            Option(d.get("tokenizer_sha256")).filter(_.isTextual).map(_.asText)
          )
        }
      }
    }
    found.groupBy(_.name).values.map(_.head).toSeq.sortBy(t => found.indexWhere(_.name == t.name))
  }

  /** The status of each tokenizer file beside the model `uri` (an error names a missing one). */
  private def statTokenizers(
      uri: String,
      tokenizers: Seq[TokenizerFile],
      conf: Configuration
  ): Seq[FileStatus] =
    tokenizers.map { t =>
      val st = stat(beside(uri, t.name), s"tokenizer ${t.name} (named by the model spec)", conf)
      if (!st.isFile)
        throw new ModelLoadException(s"tokenizer ${beside(uri, t.name)} is not a file")
      st
    }

  private def beside(uri: String, name: String): String =
    new HPath(new HPath(uri).getParent, name).toString

  /** Copies `uri` and its spec into the node cache once per (URI, length, modification time), under
    * a file lock (several executors can share a node), and returns the local model path.
    *
    * Before a cached copy is returned it is checked against the source, every time: the cache root,
    * the entry's directory and both files must pass [[PrivateDir]]'s rule (else a refusal, never a
    * repair: they may be another user's); the cached spec must equal the source's spec byte for
    * byte (it is re-read from the source: it is small and holds the `sha256` pin), the cached
    * model's length must equal the source's, and when the spec pins a `sha256` the cached model's
    * digest must equal it. A copy of ours that fails these checks (a torn or stale copy) is copied
    * again; one that still fails means the source changed during the copy, or does not match its
    * own pin, and is refused.
    *
    * The tokenizer files a text input of the spec names (`tokenizer`, beside the spec) are copied
    * with it and checked the same way: length, and `tokenizer_sha256` when pinned. A missing one is
    * a [[ModelLoadException]] naming its URI.
    */
  def fetch(uri: String, conf: Configuration): String =
    try fetchChecked(uri, conf)
    catch {
      case e: TorchSparkException =>
        Logs.model.warn(s"model $uri: not fetched: ${e.getMessage}")
        throw e
    }

  private def fetchChecked(uri: String, conf: Configuration): String = {
    val t0 = System.nanoTime()
    val (model, spec) = statBoth(uri, conf)
    val specBytes = readAll(spec.getPath, conf, specOf(uri))
    val pin = pinnedSha256(specBytes, specOf(uri))
    // The spec's tokenizers travel with it: the native side reads them beside the spec.
    val tokenizers = tokenizersOf(specBytes, specOf(uri))
    val tokenizerStats = statTokenizers(uri, tokenizers, conf)
    val root = privateCacheDir()
    val key = cacheKey(uri, model, spec, tokenizerStats)
    val dir = new File(root, key)
    val name = new HPath(uri).getName
    val local = new File(dir, name)
    val localSpec = new File(dir, specOf(name))
    val done = new File(dir, ".complete")
    val localTokenizers = tokenizers.zip(tokenizerStats).map { case (t, st) =>
      CachedTokenizer(new File(dir, t.name), st.getLen, t.pin)
    }
    val remedy = cacheRemedy(dir)
    def fresh(): Option[String] = {
      PrivateDir.check(dir.toPath, true, cacheWhat + " entry", remedy)
      (Seq(local, localSpec, done) ++ localTokenizers.map(_.file))
        .filter(f => Files.exists(f.toPath, LinkOption.NOFOLLOW_LINKS))
        .foreach { f =>
          PrivateDir.check(f.toPath, false, "the cached file", remedy)
        }
      staleness(local, localSpec, done, model.getLen, specBytes, pin, localTokenizers)
    }
    def cannotCopy(e: IOException) = new ModelLoadException(
      s"cannot copy model $uri into the node cache $dir on host ${NativeLoader.hostName()}: $e",
      e
    )
    val ready =
      try { (dir.exists() || Files.isSymbolicLink(dir.toPath)) && fresh().isEmpty }
      catch { case e: IOException => throw cannotCopy(e) }
    if (ready) {
      Logs.model.debug(s"model $uri: node cache hit $local")
      return local.getAbsolutePath
    }
    val monitor = jvmLocks.computeIfAbsent(key, _ => new Object)
    monitor.synchronized {
      try {
        PrivateDir.ensure(dir.toPath, cacheWhat + " entry", remedy)
        // Only locked, never read: inside a checked directory it needs no check of its own.
        val ch = new RandomAccessFile(new File(dir, ".lock"), "rw").getChannel
        try {
          val lock = ch.lock()
          try {
            val cached = fresh()
            if (cached.isEmpty)
              Logs.model.debug(s"model $uri: node cache hit $local (another task copied it)")
            cached.foreach { stale =>
              Files.deleteIfExists(done.toPath)
              copy(model.getPath, local, conf, uri)
              write(localSpec, specBytes)
              tokenizerStats.zip(localTokenizers).foreach { case (st, t) =>
                copy(st.getPath, t.file, conf, beside(uri, t.file.getName))
              }
              write(done, uri.getBytes(StandardCharsets.UTF_8))
              fresh().foreach { why =>
                throw new ModelLoadException(
                  s"model $uri copied into the node cache $dir on host ${NativeLoader.hostName()} " +
                    s"does not match its source: $why"
                )
              }
              Logs.model.info(
                s"fetched model $uri into the node cache $dir on host " +
                  s"${NativeLoader.hostName()} (${model.getLen} bytes, ${tokenizers.size} " +
                  s"tokenizer files, ${Logs.seconds(t0)} s; copied because $stale)"
              )
            }
          } finally lock.release()
        } finally ch.close()
      } catch {
        case e: TorchSparkException => throw e
        case e: IOException         => throw cannotCopy(e)
      }
    }
    local.getAbsolutePath
  }

  // Digests of cached models already checked by this JVM, by path and stat identity (inode,
  // length, mtime, ctime): a file in a private directory changes only through this user (and
  // fetch replaces files by rename), so it is hashed once, not per task.
  private val verified = new ConcurrentHashMap[(String, String), String]()

  /** A tokenizer's place in a cache entry, its source's length and its pin. */
  private final case class CachedTokenizer(file: File, length: Long, pin: Option[String])

  /** Why the cached copy cannot be used as is, or None when it matches the source. */
  private def staleness(
      local: File,
      localSpec: File,
      done: File,
      length: Long,
      specBytes: Array[Byte],
      pin: Option[String],
      tokenizers: Seq[CachedTokenizer]
  ): Option[String] = {
    if (!done.isFile || !local.isFile || !localSpec.isFile || !tokenizers.forall(_.file.isFile))
      return Some("the copy is incomplete")
    if (local.length() != length)
      return Some(s"the cached model has ${local.length()} bytes, the source $length")
    if (!java.util.Arrays.equals(Files.readAllBytes(localSpec.toPath), specBytes))
      return Some("the cached spec differs from the source's")
    val tokenizerWhy = tokenizers.iterator.map { t =>
      val name = t.file.getName
      if (t.file.length() != t.length)
        Some(s"the cached tokenizer $name has ${t.file.length()} bytes, the source ${t.length}")
      else
        t.pin.flatMap { expected =>
          val actual = digest(t.file)
          if (actual.equalsIgnoreCase(expected)) None
          else Some(s"the tokenizer $name's sha256 is $actual, the spec pins $expected")
        }
    }
    tokenizerWhy.collectFirst { case Some(why) => why }.orElse {
      pin.flatMap { expected =>
        val actual = digest(local)
        if (actual.equalsIgnoreCase(expected)) None
        else Some(s"the cached model's sha256 is $actual, the spec pins $expected")
      }
    }
  }

  /** `f`'s sha256, hashed once per stat identity (see [[verified]]). */
  private def digest(f: File): String = {
    val stat =
      Files.readAttributes(
        f.toPath,
        "unix:ino,size,lastModifiedTime,ctime",
        LinkOption.NOFOLLOW_LINKS
      )
    val id =
      (f.getPath, Seq("ino", "size", "lastModifiedTime", "ctime").map(stat.get).mkString(" "))
    Option(verified.get(id)).getOrElse {
      val d = sha256File(f)
      verified.put(id, d)
      d
    }
  }

  /** The spec's `sha256` pin, if any (the native side checks that it is well formed). */
  private def pinnedSha256(specBytes: Array[Byte], specUri: String): Option[String] =
    try {
      val node = new com.fasterxml.jackson.databind.ObjectMapper().readTree(specBytes)
      Option(node).flatMap(n => Option(n.get("sha256"))).filter(_.isTextual).map(_.asText)
    } catch {
      case e: IOException =>
        throw new ModelSpecException(s"model spec $specUri is not valid JSON: ${e.getMessage}", e)
    }

  private[torchspark] def readAll(src: HPath, conf: Configuration, uri: String): Array[Byte] =
    try {
      val in = src.getFileSystem(conf).open(src)
      try in.readAllBytes()
      finally in.close()
    } catch {
      case e: IOException => throw new ModelLoadException(s"cannot read $uri: $e", e)
    }

  private def sha256File(f: File): String = {
    val md = MessageDigest.getInstance("SHA-256")
    val in = Files.newInputStream(f.toPath)
    try {
      val buf = new Array[Byte](1 << 20)
      var n = in.read(buf)
      while (n >= 0) { md.update(buf, 0, n); n = in.read(buf) }
    } finally in.close()
    md.digest().map(b => f"${b & 0xff}%02x").mkString
  }

  /** Writes `bytes` to `dest` through a temp file and an atomic rename. */
  private def write(dest: File, bytes: Array[Byte]): Unit =
    replaceAtomically(dest)(tmp => { Files.write(tmp, bytes); () })

  private def copy(src: HPath, dest: File, conf: Configuration, uri: String): Unit =
    replaceAtomically(dest) { tmp =>
      val in =
        try src.getFileSystem(conf).open(src)
        catch {
          case e: IOException => throw new ModelLoadException(s"cannot read $uri: $e", e)
        }
      // Into the 0600 temp file itself (Files.copy would recreate it with the umask's mode).
      try {
        val out = Files.newOutputStream(tmp)
        try { in.transferTo(out); () }
        finally out.close()
      } finally in.close()
    }

  /** Fills a temp file beside `dest` (Files.createTempFile makes it 0600 whatever the umask, so the
    * checks above pass), then renames it over `dest` atomically.
    */
  private def replaceAtomically(dest: File)(fill: java.nio.file.Path => Unit): Unit = {
    val tmp = Files.createTempFile(dest.getParentFile.toPath, dest.getName, ".part").toFile
    try {
      fill(tmp.toPath)
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
