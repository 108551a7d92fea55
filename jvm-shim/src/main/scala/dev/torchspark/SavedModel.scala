package dev.torchspark

import java.io.IOException
import java.security.MessageDigest

import scala.collection.JavaConverters._

import com.fasterxml.jackson.databind.ObjectMapper
import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.{ChecksumFileSystem, FileSystem, Path => HPath}
import org.apache.spark.ml.util.{MLReader, MLWriter}
import org.apache.spark.sql.SparkSession

/** Saved stages that carry their model (docs/saved-pipelines.md).
  *
  * With `embedModel` (the default) a stage's `write()` saves its params as Spark's
  * DefaultParamsWriter does, then copies the model file, its spec and the spec's tokenizer files
  * into `<stage>/model/` with `manifest.json` (each file's name, length and SHA-256). `load()`
  * checks every copied file against the manifest on the driver and points `modelPath` at the copy,
  * which executors then read like any model path (cluster storage: the node cache and its pins). A
  * stage saved without a copy (by reference, or before this existed) loads as it was saved.
  */
private[torchspark] object SavedModel {

  /** The folder of the copy inside a stage's directory, and its manifest's name. */
  val Dir = "model"
  val Manifest = "manifest.json"

  /** Writes `stage`'s params with `inner` (Spark's params writer), then its model's copy. */
  final class Writer(stage: TorchSparkModelParams, inner: MLWriter) extends MLWriter {
    override protected def saveImpl(path: String): Unit = {
      inner.session(sparkSession).save(path)
      if (stage.getEmbedModel && stage.isDefined(stage.modelPath))
        copyInto(sparkSession, stage.getModelPath, path)
    }
  }

  /** Loads a stage with `inner` (Spark's params reader), then points it at its model's copy. */
  final class Reader[T <: TorchSparkModelParams](inner: MLReader[T]) extends MLReader[T] {
    override def load(path: String): T = {
      val stage = inner.session(sparkSession).load(path)
      attach(sparkSession, stage, path)
      stage
    }
  }

  private def conf(spark: SparkSession): Configuration = ModelSource.hadoopConf(spark)

  /** The model `modelPath` names as a Hadoop path the driver reads: a cluster-storage URI as it is,
    * a loaded stage's copy (kept in [[stashed]] if overwrite() deleted it), else the local (or
    * `--files`) file this JVM resolves.
    */
  private def sourceOf(modelPath: String, c: Configuration): HPath =
    if (ModelSource.isRemote(modelPath)) qualified(new HPath(modelPath), c)
    else {
      val plain = qualified(new HPath(new java.io.File(modelPath).getAbsoluteFile.toURI), c)
      if (stashed.containsKey(plain.toString)) plain
      else new HPath(new java.io.File(NativeRunner.resolveModel(modelPath)).toURI)
    }

  private def qualified(p: HPath, c: Configuration): HPath = p.getFileSystem(c).makeQualified(p)

  /** Copies of the files of stages loaded by this JVM, by their path in the stage directory: saving
    * such a stage with overwrite() onto its own directory deletes that directory (Spark's writers
    * do, before any stage writes) and then copies from here. Filled while load() hashes the files
    * (no extra read), one local file per content (by SHA-256), removed when the JVM exits.
    */
  private val stashed = new java.util.concurrent.ConcurrentHashMap[String, java.io.File]()

  /** The MLflow record of each loaded stage's manifest, by its model copy's path: carried over when
    * the stage is saved again.
    */
  private val loadedMlflow =
    new java.util.concurrent.ConcurrentHashMap[String, com.fasterxml.jackson.databind.JsonNode]()

  private lazy val stashRoot: java.io.File = {
    val dir = java.nio.file.Files.createTempDirectory("torchspark-saved-copies").toFile
    Runtime.getRuntime.addShutdownHook(new Thread(() => {
      Option(dir.listFiles).foreach(_.foreach(_.delete()))
      dir.delete(); ()
    }))
    dir
  }

  /** `p`, or its stashed copy when `p` is gone (a loaded stage saved onto its own directory). */
  private def open(p: HPath, c: Configuration): java.io.InputStream = {
    val fs = p.getFileSystem(c)
    Option(stashed.get(qualified(p, c).toString)).filter(_ => !fs.exists(p)) match {
      case Some(local) => java.nio.file.Files.newInputStream(local.toPath)
      case None        => fs.open(p)
    }
  }

  /** Copies the model, its spec and its tokenizers into `<stageDir>/model/` with a manifest. An
    * MLflow model URI is resolved (once) and its version's files are copied; the manifest records
    * the URI and the version (`mlflow`).
    */
  def copyInto(spark: SparkSession, modelPath: String, stageDir: String): Unit = {
    val c = conf(spark)
    val mlflow =
      if (MlflowResolver.isMlflowUri(modelPath)) Some(MlflowResolver.resolve(spark, modelPath))
      else None
    val path = mlflow.map(_.modelPath).getOrElse(modelPath)
    ModelSource.refuseUnverifiable(path)
    val model = sourceOf(path, c)
    val spec = new HPath(ModelSource.specOf(model.toString))
    val specBytes =
      try {
        val in = open(spec, c);
        try in.readAllBytes()
        finally in.close()
      } catch {
        case e: IOException => throw new ModelLoadException(s"cannot read $spec: $e", e)
      }
    val tokenizers = ModelSource
      .tokenizersOf(specBytes, spec.toString)
      .map(t => new HPath(model.getParent, t.name))
    val dir = new HPath(stageDir, Dir)
    val dirFs = dir.getFileSystem(c)
    dirFs.mkdirs(dir)
    val files = (model +: spec +: tokenizers).map { src =>
      val dst = new HPath(dir, src.getName)
      val (bytes, sha) =
        try copyHashing(src, c, dst, dirFs)
        catch {
          case e: IOException =>
            throw new ModelLoadException(
              s"saving the stage at $stageDir: cannot copy $src into $dir: $e",
              e
            )
        }
      (src.getName, bytes, sha)
    }
    val m = new ObjectMapper()
    val root = m.createObjectNode()
    root.put("version", 1)
    root.put("model", model.getName)
    root.put("source", modelPath)
    mlflow match {
      case Some(r) =>
        val m = root.putObject("mlflow")
        m.put("uri", r.uri).put("tracking_uri", r.trackingUri).put("storage_uri", r.storageUri)
        m.put("model_path", r.modelPath)
        r.name.foreach(m.put("name", _))
        r.version.foreach(m.put("version", _))
        r.runId.foreach(m.put("run_id", _))
      case None => // a loaded stage saved again keeps the MLflow version it was saved with
        Option(loadedMlflow.get(model.toString)).foreach(m => { root.replace("mlflow", m); () })
    }
    val arr = root.putArray("files")
    files.foreach { case (name, bytes, sha) =>
      arr.addObject().put("name", name).put("bytes", bytes).put("sha256", sha)
    }
    val out = dirFs.create(new HPath(dir, Manifest), true)
    try out.write(m.writerWithDefaultPrettyPrinter().writeValueAsBytes(root))
    finally out.close()
  }

  /** Streams `src` to `dst`, returning its length and SHA-256 (hex). */
  private def copyHashing(
      src: HPath,
      c: Configuration,
      dst: HPath,
      dstFs: FileSystem
  ): (Long, String) = {
    val md = MessageDigest.getInstance("SHA-256")
    val in = open(src, c)
    try {
      val out = dstFs.create(dst, true)
      try {
        val buf = new Array[Byte](1 << 20)
        var total = 0L
        var n = in.read(buf)
        while (n >= 0) {
          md.update(buf, 0, n)
          out.write(buf, 0, n)
          total += n
          n = in.read(buf)
        }
        (total, hexOf(md.digest()))
      } finally out.close()
    } finally in.close()
  }

  private def hexOf(d: Array[Byte]): String = d.map(b => f"${b & 0xff}%02x").mkString

  /** SHA-256 and length of `p`, read through its file system, written to `copy` as it is read. */
  private def hashOf(p: HPath, c: Configuration, copy: java.io.File): (Long, String) = {
    val md = MessageDigest.getInstance("SHA-256")
    // The manifest is the check: read past Hadoop's .crc files (the local file system's), whose
    // own failure would not name both digests.
    val fs = p.getFileSystem(c) match {
      case cfs: ChecksumFileSystem => cfs.getRawFileSystem
      case other                   => other
    }
    val in = fs.open(p)
    try {
      val out = java.nio.file.Files.newOutputStream(copy.toPath)
      try {
        val buf = new Array[Byte](1 << 20)
        var total = 0L
        var n = in.read(buf)
        while (n >= 0) { md.update(buf, 0, n); out.write(buf, 0, n); total += n; n = in.read(buf) }
        (total, hexOf(md.digest()))
      } finally out.close()
    } finally in.close()
  }

  /** Whether the stage's saved metadata asked for a copy (`embedModel` true, set or default): a
    * stage saved before the param existed has neither and loads by reference.
    */
  private def savedWithCopy(stageDir: String, c: Configuration): Boolean = {
    val meta = new HPath(stageDir, "metadata")
    val fs = meta.getFileSystem(c)
    val parts = Option(fs.listStatus(meta)).toSeq.flatten
      .filter(s => s.isFile && s.getPath.getName.startsWith("part-"))
    parts.headOption.exists { p =>
      val root = new ObjectMapper().readTree(ModelSource.readAll(p.getPath, c, p.getPath.toString))
      def flag(section: String): Option[Boolean] =
        Option(root.get(section)).flatMap(s => Option(s.get("embedModel"))).map(_.asBoolean)
      flag("paramMap").orElse(flag("defaultParamMap")).getOrElse(false)
    }
  }

  /** Checks the copy in `stageDir` against its manifest and points `stage` at it; a stage saved
    * without a copy is left as loaded.
    * @throws ModelLoadException
    *   the stage was saved with a copy that is missing, or a file fails its length or checksum
    */
  def attach(spark: SparkSession, stage: TorchSparkModelParams, stageDir: String): Unit = {
    val c = conf(spark)
    val dir = new HPath(stageDir, Dir)
    val fs = dir.getFileSystem(c)
    val manifestPath = new HPath(dir, Manifest)
    val saved = stage.isDefined(stage.modelPath) && savedWithCopy(stageDir, c)
    if (!fs.exists(manifestPath)) {
      if (saved)
        throw new ModelLoadException(
          s"saved stage $stageDir was written with its model (embedModel=true) but " +
            s"${manifestPath} is missing: the stage directory is incomplete (copy the whole " +
            "directory, or save the pipeline again)"
        )
      return
    }
    val root =
      try new ObjectMapper().readTree(ModelSource.readAll(manifestPath, c, manifestPath.toString))
      catch {
        case e: IOException =>
          throw new ModelLoadException(s"saved stage $stageDir: $manifestPath is unreadable: $e", e)
      }
    val modelName = Option(root.get("model")).map(_.asText).getOrElse("")
    val files = Option(root.get("files")).toSeq.flatMap(_.elements().asScala)
    if (modelName.isEmpty || files.isEmpty)
      throw new ModelLoadException(s"saved stage $stageDir: $manifestPath names no model file")
    val kept = files.map { f =>
      val name = f.path("name").asText
      val want = f.path("sha256").asText
      val wantBytes = f.path("bytes").asLong(-1L)
      val p = new HPath(dir, name)
      if (name.isEmpty || name.contains('/') || name.contains(".."))
        throw new ModelLoadException(
          s"saved stage $stageDir: $manifestPath names `$name`, not a file name"
        )
      if (!fs.exists(p))
        throw new ModelLoadException(
          s"saved stage $stageDir: its model copy $p is missing (the manifest lists it with " +
            s"sha256 $want); copy the whole stage directory, or save the pipeline again"
        )
      val tmp = java.io.File.createTempFile(".load-", ".part", stashRoot)
      try {
        val (bytes, got) =
          try hashOf(p, c, tmp)
          catch {
            case e: IOException =>
              throw new ModelLoadException(
                s"saved stage $stageDir: cannot read its model copy $p: $e",
                e
              )
          }
        if (got != want || bytes != wantBytes)
          throw new ModelLoadException(
            s"saved stage $stageDir: $p fails its checksum: sha256 $got ($bytes bytes), the " +
              s"manifest says $want ($wantBytes bytes); the copy changed after it was saved"
          )
        val kept = new java.io.File(stashRoot, got)
        if (!kept.isFile)
          try java.nio.file.Files.move(tmp.toPath, kept.toPath)
          catch { case _: java.nio.file.FileAlreadyExistsException => () } // same bytes
        fs.makeQualified(p).toString -> kept
      } finally { tmp.delete(); () }
    }
    kept.foreach { case (k, f) => stashed.put(k, f) }
    val copy = fs.makeQualified(new HPath(dir, modelName))
    Option(root.get("mlflow")).foreach(m => loadedMlflow.put(copy.toString, m))
    // A local copy as a plain path (what local model paths are); anything else as its URI.
    val target =
      if (copy.toUri.getScheme == "file") copy.toUri.getPath else copy.toString
    stage.setModelPath(target)
  }
}
