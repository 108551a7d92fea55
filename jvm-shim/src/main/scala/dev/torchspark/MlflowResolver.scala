package dev.torchspark

import java.io.{File, IOException}
import java.net.{URI, URLEncoder}
import java.net.http.{HttpClient, HttpRequest, HttpResponse}
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, StandardCopyOption}
import java.time.Duration
import java.util.Base64

import scala.collection.JavaConverters._
import scala.collection.mutable

import com.fasterxml.jackson.databind.{JsonNode, ObjectMapper}
import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.{FileStatus, Path => HPath}
import org.apache.spark.sql.SparkSession

/** What an MLflow model URI resolved to (docs/mlflow.md): `name` and `version` for a registered
  * model (None for `runs:/` and `models:/m-<id>`), the run that logged it, its artifact location
  * (`storageUri`) and the model file that the surfaces then read like any model path (`modelPath`:
  * a cluster-storage URI, or a local path).
  */
final case class MlflowModel(
    uri: String,
    trackingUri: String,
    name: Option[String],
    version: Option[String],
    runId: Option[String],
    storageUri: String,
    modelPath: String
) {
  def describe: String = {
    val what =
      version.map(v => s"${name.getOrElse("")} version $v").getOrElse("no registry version")
    s"$uri -> $what (run ${runId.getOrElse("?")}), artifacts $storageUri, model $modelPath " +
      s"(tracking server $trackingUri)"
  }
}

/** MLflow model URIs (`models:/name/<version>`, `models:/name@alias`, `models:/m-<id>`,
  * `runs:/<run>/<path>`) resolved on the driver without Python: the tracking server's REST API
  * (2.0) gives the version and its artifact location, which is read through Hadoop's FileSystem (a
  * local artifact root, `hdfs://`, `s3a://`, ...) or, for `mlflow-artifacts:` locations, downloaded
  * once through the server's artifact proxy into the driver's model cache.
  *
  * Each transform and each `TorchSpark.register` resolves once ([[once]]): every task of its job
  * reads the file resolved then, so an alias moved mid-job never mixes two versions.
  */
object MlflowResolver {

  /** The Spark setting of the tracking server, over the environment's `MLFLOW_TRACKING_URI`. */
  val TrackingUriConf = "spark.torchspark.mlflow.trackingUri"

  private val Timeout = Duration.ofSeconds(10)
  private val ModelSuffixes = Seq(".pt", ".pt2")
  private val log = org.slf4j.LoggerFactory.getLogger("dev.torchspark.mlflow")
  private lazy val http =
    HttpClient
      .newBuilder()
      .connectTimeout(Timeout)
      .followRedirects(HttpClient.Redirect.NORMAL)
      .build()

  def isMlflowUri(path: String): Boolean =
    path != null && (path.startsWith("models:/") || path.startsWith("runs:/"))

  // Resolutions made inside the current `once` block of this thread, by (server, URI).
  private val scope = new ThreadLocal[mutable.Map[(String, String), MlflowModel]]

  /** Runs `body` with each MLflow URI resolved at most once inside it (a transform reads its spec
    * for the schema and again to start the job: both see the same version).
    */
  def once[T](body: => T): T =
    if (scope.get != null) body
    else {
      scope.set(mutable.Map.empty)
      try body
      finally scope.remove()
    }

  /** The tracking server: `spark.torchspark.mlflow.trackingUri`, else `MLFLOW_TRACKING_URI`. */
  def trackingUri(spark: SparkSession, uri: String): String = {
    val conf = Option(spark).flatMap(s => s.conf.getOption(TrackingUriConf))
    val server = conf.orElse(sys.env.get("MLFLOW_TRACKING_URI")).map(_.trim).filter(_.nonEmpty)
    server match {
      case Some(s) if s.startsWith("http://") || s.startsWith("https://") => s.stripSuffix("/")
      case Some(s)                                                        =>
        throw new ConfigException(
          s"$uri: the MLflow tracking URI $s is not an http(s) server; the JVM reads MLflow " +
            s"models from a tracking server (`mlflow server`): set $TrackingUriConf (or " +
            "MLFLOW_TRACKING_URI) to its URL"
        )
      case None =>
        throw new ConfigException(
          s"$uri: no MLflow tracking server is set; set $TrackingUriConf (or MLFLOW_TRACKING_URI) " +
            "to its URL, e.g. http://mlflow.internal:5000"
        )
    }
  }

  /** `uri` resolved (once per [[once]] block) to its version and model file.
    * @throws ConfigException
    *   an unknown name, alias, version, run or logged model, or an unreachable server, naming the
    *   URI, the server and what it has
    * @throws ModelLoadException
    *   artifacts without exactly one `.pt`/`.pt2` (or TorchScript `.pth`) model with its spec
    */
  def resolve(spark: SparkSession, uri: String): MlflowModel = {
    val server = trackingUri(spark, uri)
    val cached = Option(scope.get).flatMap(_.get((server, uri)))
    cached.getOrElse {
      val r = resolveNow(spark, server, uri)
      log.info(s"resolved ${r.describe}")
      Option(scope.get).foreach(_.put((server, uri), r))
      r
    }
  }

  /** The resolution of `uri` already made in this thread's [[once]] block, if any: never a request
    * (so what a transform reports is the version its job reads, even if the alias moved since).
    */
  def resolvedInScope(spark: SparkSession, uri: String): Option[MlflowModel] =
    if (!isMlflowUri(uri)) None
    else
      Option(scope.get).flatMap(m =>
        scala.util.Try(trackingUri(spark, uri)).toOption.flatMap(s => m.get((s, uri)))
      )

  private def resolveNow(spark: SparkSession, server: String, uri: String): MlflowModel = {
    val api = new Api(server, uri)
    if (uri.startsWith("runs:/")) {
      val rest = uri.stripPrefix("runs:/").stripPrefix("/").stripSuffix("/")
      val (runId, sub) = rest.indexOf('/') match {
        case -1 => (rest, "")
        case i  => (rest.substring(0, i), rest.substring(i + 1))
      }
      if (runId.isEmpty)
        throw new ConfigException(s"$uri: a runs:/ URI is runs:/<run id>/<artifact path>")
      val storage = join(api.runArtifacts(runId), sub)
      done(spark, api, None, None, Some(runId), storage)
    } else {
      val rest = uri.stripPrefix("models:/").stripPrefix("/").stripSuffix("/")
      if (rest.startsWith("m-") && !rest.contains('/') && !rest.contains('@')) {
        val (runId, storage) = api.loggedModel(rest)
        done(spark, api, None, None, runId, storage)
      } else {
        val (name, version) =
          if (rest.contains('@')) {
            val at = rest.indexOf('@')
            val (name, alias) = (rest.substring(0, at), rest.substring(at + 1))
            val aliases = api.aliases(name)
            val v = aliases.getOrElse(
              alias, {
                val have = aliases.toSeq.sorted.map { case (a, v) => s"@$a -> $v" }.mkString(", ")
                throw new ConfigException(
                  s"$uri: the registered model '$name' on the MLflow tracking server $server " +
                    s"has no alias '$alias' (its aliases: ${if (have.isEmpty) "none" else have})"
                )
              }
            )
            (name, v)
          } else {
            val slash = rest.lastIndexOf('/')
            val (name, version) =
              if (slash > 0) (rest.substring(0, slash), rest.substring(slash + 1)) else ("", "")
            if (name.isEmpty || version.isEmpty || !version.forall(_.isDigit))
              throw new ConfigException(
                s"$uri: expected models:/<name>/<version number>, models:/<name>@<alias> or " +
                  "models:/m-<model id> (registry stages are not supported: use an alias)"
              )
            api.aliases(name) // the model exists (else its error names it)
            (name, version)
          }
        val runId = api.modelVersionRun(name, version)
        // The version's artifacts: a runs:/ or models:/m- source is resolved once more.
        val download = api.downloadUri(name, version)
        val storage =
          if (download.startsWith("runs:/")) {
            val rest = download.stripPrefix("runs:/").stripPrefix("/")
            val i = rest.indexOf('/')
            val (run, sub) =
              if (i < 0) (rest, "") else (rest.substring(0, i), rest.substring(i + 1))
            join(api.runArtifacts(run), sub)
          } else if (download.startsWith("models:/m-"))
            api.loggedModel(download.stripPrefix("models:/"))._2
          else download
        done(spark, api, Some(name), Some(version), runId, storage)
      }
    }
  }

  private def join(base: String, sub: String): String =
    if (sub.isEmpty) base else base.stripSuffix("/") + "/" + sub.stripPrefix("/")

  private def done(
      spark: SparkSession,
      api: Api,
      name: Option[String],
      version: Option[String],
      runId: Option[String],
      storage: String
  ): MlflowModel = {
    val model =
      if (storage.startsWith("mlflow-artifacts:")) viaProxy(api, storage)
      else viaFileSystem(api.uri, storage, ModelSource.hadoopConf(spark))
    MlflowModel(api.uri, api.server, name, version, runId, storage, model)
  }

  /** The one model file (with its spec beside it) among `files` (paths relative to the artifact
    * location), as Python's `torchspark.mlflow._model_file` picks it.
    */
  private def pick(
      uri: String,
      storage: String,
      files: Seq[String],
      torchScript: String => Boolean
  ): String = {
    val set = files.toSet
    val models = files.sorted.filter { f =>
      ModelSuffixes.exists(s => f.endsWith(s)) || (f.endsWith(".pth") && torchScript(f))
    }
    val usable = models.filter(m => set.contains(ModelSource.specOf(m)))
    if (usable.size == 1) return usable.head
    val shown = files.sorted.take(20).mkString(", ") +
      (if (files.size > 20) s" and ${files.size - 20} more" else "")
    val why =
      if (usable.isEmpty && models.nonEmpty)
        "no .pt/.pt2 model with its spec JSON beside it (model.pt -> model.json)"
      else if (usable.isEmpty) "no .pt, .pt2 or TorchScript .pth (mlflow.pytorch) model file"
      else s"${usable.size} models with specs; name one with runs:/<run>/<path to it>"
    throw new ModelLoadException(
      s"$uri: its artifacts $storage hold $why; found: ${if (shown.isEmpty) "nothing" else shown}"
    )
  }

  /** A TorchScript archive: a zip with code/ and data.pkl under one root folder (an eager module's
    * pickle, also `model.pth`, is not one).
    */
  private def isTorchScript(open: () => java.io.InputStream): Boolean =
    try {
      val z = new java.util.zip.ZipInputStream(open())
      try {
        var (code, data) = (false, false)
        var e = z.getNextEntry
        while (e != null && !(code && data)) {
          code ||= e.getName.contains("/code/")
          data ||= e.getName.endsWith("/data.pkl")
          e = z.getNextEntry
        }
        code && data
      } finally z.close()
    } catch { case _: IOException => false }

  /** The model file under `storage`, read through Hadoop's FileSystem: its URI (a plain path for
    * the local file system, what local model paths are).
    */
  private def viaFileSystem(uri: String, storage: String, conf: Configuration): String = {
    val root = new HPath(storage)
    val (fs, status) =
      try {
        val fs = root.getFileSystem(conf)
        (fs, fs.getFileStatus(root))
      } catch {
        case e: java.io.FileNotFoundException =>
          throw new ModelLoadException(s"$uri: its artifacts $storage are not found", e)
        case e: IOException =>
          throw new ModelLoadException(s"$uri: cannot read its artifacts $storage: $e", e)
        case e: RuntimeException =>
          throw new ModelLoadException(s"$uri: cannot open its artifacts $storage: $e", e)
      }
    val qualified = fs.makeQualified(status.getPath)
    val (base, files) =
      if (status.isFile) {
        // A runs:/ URI may name the model file itself; its spec sits beside it.
        val parent = qualified.getParent
        val spec = new HPath(ModelSource.specOf(qualified.toString))
        (parent, Seq(qualified.getName) ++ (if (fs.exists(spec)) Seq(spec.getName) else Nil))
      } else {
        val it = fs.listFiles(qualified, true)
        val found = mutable.Buffer[String]()
        val prefix = qualified.toUri.getPath.stripSuffix("/") + "/"
        while (it.hasNext) {
          val p: FileStatus = it.next()
          found += p.getPath.toUri.getPath.stripPrefix(prefix)
        }
        (qualified, found.toSeq.filterNot(_.endsWith(".crc")))
      }
    val rel = pick(uri, storage, files, f => isTorchScript(() => fs.open(new HPath(base, f))))
    val model = new HPath(base, rel)
    if (model.toUri.getScheme == "file") model.toUri.getPath else model.toString
  }

  /** `mlflow-artifacts:` locations (the server proxies the artifact store): the model, its spec and
    * its tokenizers are downloaded once into the driver's model cache (by server and location: a
    * logged artifact does not change), into a temporary folder renamed when complete.
    */
  private def viaProxy(api: Api, storage: String): String = {
    val u = new URI(storage)
    val base =
      if (u.getAuthority != null)
        s"${if (api.server.startsWith("https")) "https" else "http"}://" +
          u.getAuthority
      else api.server
    val root = Option(u.getPath).getOrElse("").stripPrefix("/").stripSuffix("/")
    def list(dir: String): Seq[(String, Long)] = api
      .proxyList(base, dir)
      .flatMap { case (path, isDir, size) =>
        val full = if (path.contains('/')) path else join(dir, path)
        if (isDir) list(full) else Seq((full, size))
      }
    val listed = list(root)
    // A location naming a file lists nothing under it: its folder is listed instead.
    val (dir, entries) =
      if (listed.nonEmpty || root.isEmpty) (root, listed)
      else {
        val parent = root.substring(0, math.max(0, root.lastIndexOf('/')))
        val beside = list(parent).filter { case (p, _) =>
          p == root || p == ModelSource.specOf(root)
        }
        (parent, beside)
      }
    val rel = entries.map { case (p, _) => p.stripPrefix(dir).stripPrefix("/") }
    val key = java.security.MessageDigest
      .getInstance("SHA-256")
      .digest(s"${api.server}\n$storage".getBytes(StandardCharsets.UTF_8))
      .take(12)
      .map(b => f"${b & 0xff}%02x")
      .mkString
    val cacheRoot = ModelSource.privateCacheDir()
    val dst = new File(cacheRoot, s"mlflow-$key")
    val tmp = Files.createTempDirectory(cacheRoot.toPath, s".mlflow-$key-").toFile
    try {
      def fetch(name: String): File = {
        val f = new File(tmp, name)
        f.getParentFile.mkdirs()
        api.proxyDownload(base, join(dir, name), f)
        f
      }
      val chosen = pick(
        api.uri,
        storage,
        rel,
        f => isTorchScript(() => Files.newInputStream(fetch(f).toPath))
      )
      if (!dst.isDirectory) {
        fetch(chosen)
        val spec = fetch(ModelSource.specOf(chosen))
        val tokenizers = ModelSource.tokenizersOf(Files.readAllBytes(spec.toPath), spec.toString)
        val specDir = Option(new File(chosen).getParent).map(_ + "/").getOrElse("")
        tokenizers.foreach(t => fetch(specDir + t.name))
        try Files.move(tmp.toPath, dst.toPath, StandardCopyOption.ATOMIC_MOVE)
        catch { case _: IOException => () } // another driver thread renamed its copy first
      }
      new File(dst, chosen).getAbsolutePath
    } finally deleteTree(tmp)
  }

  private def deleteTree(f: File): Unit = {
    Option(f.listFiles).foreach(_.foreach(deleteTree))
    f.delete(); ()
  }

  /** The REST calls of one resolution, each bounded by 10 s; errors name the URI and server. */
  private final class Api(val server: String, val uri: String) {
    private val mapper = new ObjectMapper()

    private def enc(s: String) = URLEncoder.encode(s, StandardCharsets.UTF_8)

    private def request(url: String): HttpRequest.Builder = {
      val b = HttpRequest.newBuilder(URI.create(url)).timeout(Timeout).GET()
      // MLflow's client reads the same variables for an authenticated server.
      sys.env.get("MLFLOW_TRACKING_TOKEN").filter(_.nonEmpty) match {
        case Some(t) => b.header("Authorization", s"Bearer $t")
        case None    =>
          for {
            user <- sys.env.get("MLFLOW_TRACKING_USERNAME")
            pass <- sys.env.get("MLFLOW_TRACKING_PASSWORD")
          } b.header(
            "Authorization",
            "Basic " + Base64.getEncoder.encodeToString(
              s"$user:$pass".getBytes(StandardCharsets.UTF_8)
            )
          )
      }
      b
    }

    private def unreachable(e: Exception) = new ConfigException(
      s"$uri: the MLflow tracking server $server is unreachable ($e); set $TrackingUriConf (or " +
        "MLFLOW_TRACKING_URI) to a server this driver can reach",
      e
    )

    /** GET `path` of the REST API: Right(json) for 200, Left((error_code, message)) otherwise. */
    private def get(path: String, params: (String, String)*): Either[(String, String), JsonNode] = {
      val query = params.map { case (k, v) => s"${enc(k)}=${enc(v)}" }.mkString("&")
      val url = s"$server/api/2.0/mlflow/$path" + (if (query.isEmpty) "" else "?" + query)
      val resp =
        try http.send(request(url).build(), HttpResponse.BodyHandlers.ofString())
        catch {
          case e: IOException          => throw unreachable(e)
          case e: InterruptedException => throw unreachable(e)
        }
      val body =
        try Option(mapper.readTree(resp.body()))
        catch { case _: IOException => None }
      if (resp.statusCode == 200 && body.isDefined) Right(body.get)
      else {
        val code = body.map(_.path("error_code").asText("")).getOrElse("")
        val msg = body.map(_.path("message").asText("")).filter(_.nonEmpty)
        Left((code, msg.getOrElse(s"HTTP ${resp.statusCode} ${resp.body().take(200)}")))
      }
    }

    private def notFound(code: String) =
      code == "RESOURCE_DOES_NOT_EXIST" || code == "INVALID_PARAMETER_VALUE"

    private def failed(what: String, err: (String, String)) = new ConfigException(
      s"$uri: the MLflow tracking server $server failed $what: ${err._2}"
    )

    /** The registered model's aliases (alias -> version). */
    def aliases(name: String): Map[String, String] =
      get("registered-models/get", "name" -> name) match {
        case Right(j) =>
          j.path("registered_model")
            .path("aliases")
            .elements()
            .asScala
            .map { a =>
              a.path("alias").asText -> a.path("version").asText
            }
            .toMap
        case Left(err) if notFound(err._1) =>
          throw new ConfigException(
            s"$uri: the MLflow tracking server $server has no registered model named '$name'"
          )
        case Left(err) => throw failed(s"to get the registered model '$name'", err)
      }

    def versions(name: String): Seq[String] =
      get("model-versions/search", "filter" -> s"name = '${name.replace("'", "\\'")}'") match {
        case Right(j) =>
          j.path("model_versions")
            .elements()
            .asScala
            .map(_.path("version").asText)
            .toSeq
            .sortBy(v => scala.util.Try(v.toLong).getOrElse(Long.MaxValue))
        case Left(_) => Nil
      }

    /** The run that logged `name` version `version`. */
    def modelVersionRun(name: String, version: String): Option[String] =
      get("model-versions/get", "name" -> name, "version" -> version) match {
        case Right(j) =>
          Option(j.path("model_version").path("run_id").asText("")).filter(_.nonEmpty)
        case Left(err) if notFound(err._1) =>
          val have = versions(name)
          throw new ConfigException(
            s"$uri: the registered model '$name' on the MLflow tracking server $server has no " +
              s"version $version (its versions: ${if (have.isEmpty) "none" else have.mkString(", ")})"
          )
        case Left(err) => throw failed(s"to get version $version of '$name'", err)
      }

    def downloadUri(name: String, version: String): String =
      get("model-versions/get-download-uri", "name" -> name, "version" -> version) match {
        case Right(j)  => j.path("artifact_uri").asText
        case Left(err) => throw failed(s"to locate version $version of '$name'", err)
      }

    def runArtifacts(runId: String): String =
      get("runs/get", "run_id" -> runId) match {
        case Right(j)  => j.path("run").path("info").path("artifact_uri").asText
        case Left(err) =>
          throw new ConfigException(
            s"$uri: the MLflow tracking server $server has no run '$runId' (${err._2})"
          )
      }

    /** A logged model's run and artifact location. */
    def loggedModel(id: String): (Option[String], String) =
      get(s"logged-models/${enc(id)}") match {
        case Right(j) =>
          val info = j.path("model").path("info")
          (
            Option(info.path("source_run_id").asText("")).filter(_.nonEmpty),
            info.path("artifact_uri").asText
          )
        case Left(err) =>
          throw new ConfigException(
            s"$uri: the MLflow tracking server $server has no logged model '$id' (${err._2})"
          )
      }

    /** The artifact proxy's listing of `dir`: (path, is_dir, size) of each entry. */
    def proxyList(base: String, dir: String): Seq[(String, Boolean, Long)] = {
      val url = s"$base/api/2.0/mlflow-artifacts/artifacts?path=${enc(dir)}"
      val resp =
        try http.send(request(url).build(), HttpResponse.BodyHandlers.ofString())
        catch { case e: IOException => throw unreachable(e) }
      if (resp.statusCode != 200)
        throw new ModelLoadException(
          s"$uri: cannot list its artifacts $dir through the MLflow artifact proxy $base: HTTP " +
            s"${resp.statusCode} ${resp.body().take(200)}"
        )
      mapper
        .readTree(resp.body())
        .path("files")
        .elements()
        .asScala
        .map { f =>
          (f.path("path").asText, f.path("is_dir").asBoolean(false), f.path("file_size").asLong(-1))
        }
        .toSeq
    }

    def proxyDownload(base: String, path: String, dst: File): Unit = {
      val url = s"$base/api/2.0/mlflow-artifacts/artifacts/" +
        path.split('/').map(p => enc(p).replace("+", "%20")).mkString("/")
      val resp =
        try
          http.send(
            request(url).timeout(Duration.ofMinutes(30)).build(),
            HttpResponse.BodyHandlers.ofFile(dst.toPath)
          )
        catch { case e: IOException => throw unreachable(e) }
      if (resp.statusCode != 200)
        throw new ModelLoadException(
          s"$uri: cannot download its artifact $path through the MLflow artifact proxy $base: " +
            s"HTTP ${resp.statusCode}"
        )
    }
  }
}
