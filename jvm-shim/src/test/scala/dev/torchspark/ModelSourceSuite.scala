package dev.torchspark

import java.io.File
import java.nio.file.{Files, LinkOption, Path, StandardCopyOption}
import java.nio.file.attribute.PosixFilePermissions
import java.security.MessageDigest
import java.util.concurrent.{Callable, Executors}

import com.fasterxml.jackson.databind.ObjectMapper
import com.fasterxml.jackson.databind.node.ObjectNode
import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.fs.{Path => HPath}
import org.junit.{BeforeClass, Test}
import org.junit.Assert._

/** Models in cluster storage through the real Hadoop client (its local file system stands in for
  * HDFS here; the cluster tests use MiniDFS), the node cache and its lock, the image reader and the
  * doctor, on a real local[2] session.
  */
object ModelSourceSuite {
  @BeforeClass def setUp(): Unit = SparkTest.imageFixtures()
}

class ModelSourceSuite extends SparkSuite {
  import ModelSourceSuite._

  private val fixtures = SparkTest.fixtures

  private def store(): Path = {
    val d = TestDirs.dir("torchspark-store")
    Seq("resnet20.pt", "resnet20.json").foreach { f =>
      Files.copy(fixtures.resolve(f), d.resolve(f), StandardCopyOption.REPLACE_EXISTING)
    }
    d
  }

  private def withCache[T](f: File => T): T = {
    val dir = TestDirs.dir("torchspark-cache").toFile
    System.setProperty("torchspark.cache.dir", dir.toString)
    try f(dir)
    finally System.clearProperty("torchspark.cache.dir")
  }

  @Test def copiesARemoteModelOncePerVersionAndReusesIt(): Unit = withCache { cache =>
    val d = store()
    val uri = s"file://${d.resolve("resnet20.pt")}"
    val conf = new Configuration()
    val first = ModelSource.fetch(uri, conf)
    assertTrue(first.startsWith(cache.toString))
    assertArrayEquals(
      Files.readAllBytes(d.resolve("resnet20.pt")),
      Files.readAllBytes(new File(first).toPath)
    )
    assertTrue(new File(new File(first).getParentFile, "resnet20.json").isFile)
    val stamp = new File(first).lastModified()
    assertEquals(first, ModelSource.fetch(uri, conf))
    assertEquals("not copied again", stamp, new File(first).lastModified())
    // A new version of the model (other modification time) is a new cache entry.
    d.resolve("resnet20.pt").toFile.setLastModified(stamp - 60000)
    val second = ModelSource.fetch(uri, conf)
    assertNotEquals(first, second)
  }

  @Test def concurrentFetchesShareOneCopy(): Unit = withCache { _ =>
    val uri = s"file://${store().resolve("resnet20.pt")}"
    val pool = Executors.newFixedThreadPool(8)
    try {
      val futures = (0 until 8).map { _ =>
        pool.submit(new Callable[String] {
          def call(): String = ModelSource.fetch(uri, new Configuration())
        })
      }
      val paths = futures.map(_.get()).toSet
      assertEquals(1, paths.size)
      assertEquals(Files.size(fixtures.resolve("resnet20.pt")), new File(paths.head).length())
    } finally pool.shutdown()
  }

  @Test def aMissingModelOrSpecNamesTheUri(): Unit = withCache { _ =>
    val d = store()
    val missing = s"file://$d/nope.pt"
    val e = assertThrows(
      classOf[ModelLoadException],
      () => ModelSource.fetch(missing, new Configuration())
    )
    assertTrue(e.getMessage, e.getMessage.contains(s"model $missing not found"))
    Files.delete(d.resolve("resnet20.json"))
    val uri = s"file://$d/resnet20.pt"
    val e2 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(
      e2.getMessage,
      e2.getMessage.contains(
        s"model spec (it sits beside the model) file://$d/resnet20.json not found"
      )
    )
  }

  private def mode(p: Path): String =
    PrivateDir.octal(
      Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS).asInstanceOf[Int]
    )

  /** Gives `p` (and everything below it) to `nobody` with mode 0777: another tenant's files. */
  private def plantAsNobody(p: Path): Unit = {
    val nobody = p.getFileSystem.getUserPrincipalLookupService.lookupPrincipalByName("nobody")
    Files.walk(p).toArray.map(_.asInstanceOf[Path]).foreach { f =>
      Files.setOwner(f, nobody)
      Files.setPosixFilePermissions(f, PosixFilePermissions.fromString("rwxrwxrwx"))
    }
  }

  /** The cache entry `fetch` uses for `uri` (a name anyone can compute). */
  private def entryOf(cache: File, uri: String): Path = {
    val conf = new Configuration()
    def st(u: String) = { val p = new HPath(u); p.getFileSystem(conf).getFileStatus(p) }
    cache.toPath.resolve(ModelSource.cacheKey(uri, st(uri), st(ModelSource.specOf(uri))))
  }

  private def sha256(p: Path): String =
    MessageDigest
      .getInstance("SHA-256")
      .digest(Files.readAllBytes(p))
      .map(b => f"${b & 0xff}%02x")
      .mkString

  @Test def refusesACacheEntryPlantedByAnotherUser(): Unit = withCache { cache =>
    val d = store()
    val uri = s"file://${d.resolve("resnet20.pt")}"
    val planted = entryOf(cache, uri)
    Files.createDirectories(planted)
    Files.copy(fixtures.resolve("tuple_net.pt"), planted.resolve("resnet20.pt"))
    Files.copy(fixtures.resolve("resnet20.json"), planted.resolve("resnet20.json"))
    Files.write(planted.resolve(".complete"), uri.getBytes("UTF-8"))
    plantAsNobody(planted)
    val e =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    val m = e.getMessage
    for (part <- Seq(s"refusing the torchspark model cache entry $planted", "nobody", "0777"))
      assertTrue(m, m.contains(part))
    assertTrue(m, m.contains("TORCHSPARK_CACHE_DIR"))
    assertArrayEquals(
      "the planted model is left as it was, and not used",
      Files.readAllBytes(fixtures.resolve("tuple_net.pt")),
      Files.readAllBytes(planted.resolve("resnet20.pt"))
    )
  }

  @Test def refusesACacheRootOthersCanWriteOrDoNotOwn(): Unit = withCache { cache =>
    val uri = s"file://${store().resolve("resnet20.pt")}"
    Files.setPosixFilePermissions(cache.toPath, PosixFilePermissions.fromString("rwxrwxrwx"))
    val e =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(e.getMessage, e.getMessage.contains(s"refusing the torchspark model cache $cache"))
    assertTrue(e.getMessage, e.getMessage.contains("is writable by group or others (owner "))
    assertTrue(e.getMessage, e.getMessage.contains(", mode 0777)"))
    Files.setPosixFilePermissions(cache.toPath, PosixFilePermissions.fromString("rwx------"))
    val nobody =
      cache.toPath.getFileSystem.getUserPrincipalLookupService.lookupPrincipalByName("nobody")
    Files.setOwner(cache.toPath, nobody)
    val e2 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(e2.getMessage, e2.getMessage.contains("is owned by nobody (uid 65534) instead of"))
    // A private cache under a directory that others can write (and that is not sticky): they
    // could rename it away and put their own in its place.
    val open = Files.createDirectories(cache.toPath.resolveSibling(cache.getName + "-open"))
    Files.setPosixFilePermissions(open, PosixFilePermissions.fromString("rwxrwxrwx"))
    System.setProperty("torchspark.cache.dir", open.resolve("cache").toString)
    val e3 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(e3.getMessage, e3.getMessage.contains(s"its ancestor $open has mode 0777"))
    // The default layout's per-user folder, made first by another user (sticky, as in /tmp):
    // its owner could rename `models` away, so it is refused even though it is sticky.
    val planted = Files.createDirectories(
      cache.toPath
        .resolveSibling(cache.getName + "-tmp")
        .resolve(
          s"torchspark-${System.getProperty("user.name")}"
        )
    )
    Files.setPosixFilePermissions(planted, PosixFilePermissions.fromString("rwxr-xr-x"))
    Files.setOwner(planted, nobody)
    System.setProperty("torchspark.cache.dir", planted.resolve("models").toString)
    val e4 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(
      e4.getMessage,
      e4.getMessage.contains(s"refusing the torchspark model cache $planted")
    )
    assertTrue(e4.getMessage, e4.getMessage.contains("is owned by nobody"))
    // Any sticky ancestor that others can write must be root's (as /tmp) or ours.
    // (PosixFilePermissions has no sticky bit.)
    assertEquals(0, new ProcessBuilder("chmod", "1777", planted.toString).start().waitFor())
    System.setProperty("torchspark.cache.dir", planted.resolve("mine/models").toString)
    val e5 =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(
      e5.getMessage,
      e5.getMessage.contains(s"its ancestor $planted is writable by others and owned by nobody")
    )
  }

  /** A directory anyone can write, not sticky (mode 0777): others can rename what is in it. */
  private def worldWritable(name: String): Path = {
    val d = TestDirs.dir(name)
    Files.setPosixFilePermissions(d, PosixFilePermissions.fromString("rwxrwxrwx"))
    d
  }

  @Test def refusesACacheReachedThroughALinkIntoADirectoryOthersCanWrite(): Unit = withCache { _ =>
    val uri = s"file://${store().resolve("resnet20.pt")}"
    def refusal(cacheDir: Path): String = {
      System.setProperty("torchspark.cache.dir", cacheDir.toString)
      assertThrows(
        classOf[ModelLoadException],
        () => ModelSource.fetch(uri, new Configuration())
      ).getMessage
    }
    // <safe>/link -> <world-writable>/sub: the path as written passes a lexical check (every
    // directory on it is private), but whoever can write <world-writable> can swap `sub`.
    val open = worldWritable("torchspark-ww")
    val sub = Files.createDirectories(open.resolve("sub"))
    Files.setPosixFilePermissions(sub, PosixFilePermissions.fromString("rwx------"))
    val safe = TestDirs.dir("torchspark-safe")
    val link = Files.createSymbolicLink(safe.resolve("link"), sub)
    val m = refusal(link.resolve("models"))
    assertTrue(
      m,
      m.contains(
        s"its ancestor $open (reached through the symbolic link $link) has mode 0777: " +
          "writable by group or others and not sticky"
      )
    )
    assertFalse("nothing created through the link", Files.exists(sub.resolve("models")))
    // A link inside the target of a link (<safe2>/a -> <open2>/b -> <safe3>/real): the path's
    // real path and its written path both avoid <open2>, which still decides where it leads.
    val open2 = worldWritable("torchspark-ww2")
    val real =
      Files.createDirectories(TestDirs.dir("torchspark-safe3").resolve("real"))
    Files.setPosixFilePermissions(real, PosixFilePermissions.fromString("rwx------"))
    Files.createSymbolicLink(open2.resolve("b"), real)
    val a = Files.createSymbolicLink(
      TestDirs.dir("torchspark-safe2").resolve("a"),
      open2.resolve("b")
    )
    val m2 = refusal(a.resolve("models"))
    assertTrue(m2, m2.contains(s"its ancestor $open2 (reached through the symbolic link $a)"))
    // A loop of links is refused, not followed forever.
    val loop = TestDirs.dir("torchspark-loop")
    Files.createSymbolicLink(loop.resolve("x"), loop.resolve("y"))
    Files.createSymbolicLink(loop.resolve("y"), loop.resolve("x"))
    val m3 = refusal(loop.resolve("x/models"))
    assertTrue(m3, m3.contains("more than 40 symbolic links"))
    // The same through links that stay in private directories is fine.
    val mine = Files.createDirectories(safe.resolve("mine"))
    Files.setPosixFilePermissions(mine, PosixFilePermissions.fromString("rwx------"))
    val ok = Files.createSymbolicLink(safe.resolve("ok"), mine)
    System.setProperty("torchspark.cache.dir", ok.resolve("models").toString)
    val local = ModelSource.fetch(uri, new Configuration())
    assertTrue(
      local,
      Files.isRegularFile(
        mine.resolve("models").resolve(new File(local).getParentFile.getName).resolve("resnet20.pt")
      )
    )
  }

  @Test def tokenizerNamesFollowTheNativeLoadersRule(): Unit = {
    def spec(name: String) =
      s"""{"inputs": [{"name": "t", "kind": "text", "tokenizer": "$name"}]}""".getBytes("UTF-8")
    for (
      bad <- Seq("../x.json", "/etc/x", "sub/t.json", "a\\\\b.json", "..", ".", "a..b.json", "")
    ) {
      val e = assertThrows(
        classOf[ModelSpecException],
        () => ModelSource.tokenizersOf(spec(bad), "m.json")
      )
      assertTrue(e.getMessage, e.getMessage.contains("model spec m.json: inputs[0].tokenizer"))
    }
    assertEquals(
      Seq(ModelSource.TokenizerFile("tok.json", None)),
      ModelSource.tokenizersOf(spec("tok.json"), "m.json")
    )
  }

  /** One table for Rust (spec/image.rs), the JVM and Python (test_trust.py). */
  @Test def specOfFollowsTheTableRustAndPythonShare(): Unit = {
    val table = new ObjectMapper().readTree(
      SparkTest.repo.resolve("tests/fixtures/spec_paths.json").toFile
    )
    val rows = table.get("paths")
    assertTrue(rows.size >= 20)
    (0 until rows.size).foreach { i =>
      val model = rows.get(i).get(0).asText
      assertEquals(model, rows.get(i).get(1).asText, ModelSource.specOf(model))
    }
  }

  @Test def aDotfileModelInTheCacheFindsTheSpecTheNativeLoaderReads(): Unit = withCache { _ =>
    // `.pt` -> `.pt.json` (the JVM said `.json`, the native loader `.pt.json`).
    val d = TestDirs.dir("torchspark-store")
    Files.copy(fixtures.resolve("resnet20.pt"), d.resolve(".pt"))
    Files.copy(fixtures.resolve("resnet20.json"), d.resolve(".pt.json"))
    val source = ModelSource(spark, s"file://${d.resolve(".pt")}")
    source.check()
    val local = source.localPath()
    assertTrue(local, Files.isRegularFile(new File(local).toPath.resolveSibling(".pt.json")))
    val handle = NativeRunner.openModel(NativeRunner.configJson(source, "cpu", 1, "fp32"))
    NativeBridge.closeModel(handle)
  }

  @Test def modelsOverHttpOrFtpAreRefusedOnTheDriverNamingTheUri(): Unit = {
    for (
      uri <- Seq("http://127.0.0.1:9/m.pt", "HTTPS://models.example.com/m.pt", "ftp://h/m.pt2")
    ) {
      val e = assertThrows(classOf[ModelLoadException], () => ModelSource(spark, uri))
      assertTrue(
        e.getMessage,
        e.getMessage.contains(s"model $uri: torchspark does not read models over")
      )
      assertTrue(e.getMessage, e.getMessage.contains("cluster storage"))
      // On an executor too, before any byte is read.
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    }
  }

  @Test def aFileSystemThatReportsNoLengthIsRefusedBeforeCopying(): Unit = withCache { cache =>
    // Hadoop's own HTTP file system (it stats nothing: length -1) under another scheme name.
    val conf = new Configuration()
    conf.set("fs.webmodels.impl", "org.apache.hadoop.fs.http.HttpFileSystem")
    val uri = "webmodels://127.0.0.1:9/m.pt"
    val e = assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, conf))
    assertTrue(
      e.getMessage,
      e.getMessage.contains(s"model $uri: its file system (webmodels) reports no length")
    )
    assertEquals("nothing cached", 0, cache.list().length)
  }

  @Test def createsAMissingCacheRootForThisUserOnly(): Unit = withCache { parent =>
    val root = new File(parent, "a/b")
    System.setProperty("torchspark.cache.dir", root.toString)
    val local = ModelSource.fetch(s"file://${store().resolve("resnet20.pt")}", new Configuration())
    assertTrue(local.startsWith(root.toString))
    for (p <- Seq(root, root.getParentFile, new File(local).getParentFile))
      assertEquals(p.toString, "0700", mode(p.toPath))
    assertEquals("0600", mode(new File(local).toPath))
  }

  @Test def aCachedCopyThatNoLongerMatchesItsSourceIsCopiedAgain(): Unit = withCache { _ =>
    val d = store()
    // Pin the model's digest in the source spec: a same-length corruption is then seen too.
    val spec =
      new ObjectMapper().readTree(d.resolve("resnet20.json").toFile).asInstanceOf[ObjectNode]
    spec.put("sha256", sha256(d.resolve("resnet20.pt")))
    new ObjectMapper().writeValue(d.resolve("resnet20.json").toFile, spec)
    val uri = s"file://${d.resolve("resnet20.pt")}"
    val local = new File(ModelSource.fetch(uri, new Configuration())).toPath
    val good = Files.readAllBytes(d.resolve("resnet20.pt"))
    val corruptions: Seq[(String, () => Unit)] = Seq(
      "cut short" -> (() => Files.write(local, good.take(good.length / 2))),
      // Written beside it and renamed over it, as any writer here (this user) replaces files.
      "same length, other bytes" -> (() => {
        val part = local.resolveSibling("corrupt.part")
        Files.write(part, good.map(b => (b ^ 1).toByte))
        Files.move(part, local, StandardCopyOption.REPLACE_EXISTING)
      }),
      "spec edited" -> (() =>
        Files.write(local.resolveSibling("resnet20.json"), "{\"input\": {}}".getBytes("UTF-8"))
      )
    )
    for ((what, corrupt) <- corruptions) {
      corrupt()
      assertEquals(what, local.toString, ModelSource.fetch(uri, new Configuration()))
      assertArrayEquals(what, good, Files.readAllBytes(local))
      assertArrayEquals(
        what,
        Files.readAllBytes(d.resolve("resnet20.json")),
        Files.readAllBytes(local.resolveSibling("resnet20.json"))
      )
    }
  }

  @Test def aSourceThatDoesNotMatchItsOwnPinIsRefused(): Unit = withCache { _ =>
    val d = store()
    val spec =
      new ObjectMapper().readTree(d.resolve("resnet20.json").toFile).asInstanceOf[ObjectNode]
    spec.put("sha256", "0" * 64)
    new ObjectMapper().writeValue(d.resolve("resnet20.json").toFile, spec)
    val uri = s"file://${d.resolve("resnet20.pt")}"
    val e =
      assertThrows(classOf[ModelLoadException], () => ModelSource.fetch(uri, new Configuration()))
    assertTrue(e.getMessage, e.getMessage.contains(s"model $uri copied into the node cache"))
    assertTrue(e.getMessage, e.getMessage.contains(s"the spec pins ${"0" * 64}"))
  }

  @Test def sqlUdfScoresWithTheModelNowAtItsPath(): Unit = {
    val d = store()
    val k = d.resolve("resnet20.pt")
    TorchSpark.register(spark, "reload_probe", k.toString)
    val images = TorchSpark.readImages(spark, fixtures.resolve("images").toString, "*.png")
    images.createOrReplaceTempView("reload_images")
    def labels() =
      spark
        .sql("SELECT reload_probe(content).label AS l FROM reload_images")
        .collect()
        .map(_.getString(0))
        .toSet
    val cifar = labels()
    assertTrue(cifar.toString, cifar.nonEmpty && cifar.forall(_.length > 1))
    // Replaced by rename (a new inode), with its spec: the next tasks score with the new model.
    for (ext <- Seq(".pt", ".json")) {
      val part = d.resolve(s"part$ext")
      Files.copy(fixtures.resolve(s"tuple_net$ext"), part)
      Files.move(part, d.resolve(s"resnet20$ext"), StandardCopyOption.REPLACE_EXISTING)
    }
    val tuple = labels()
    assertTrue(tuple.toString, tuple.nonEmpty && tuple.subsetOf(Set("w", "x", "y", "z")))
  }

  @Test def unreachableStorageFailsOnTheDriverBeforeTheJob(): Unit = {
    val port = {
      val s = new java.net.ServerSocket(0, 1, java.net.InetAddress.getByName("127.0.0.1"));
      try s.getLocalPort
      finally s.close()
    }
    val uri = s"hdfs://127.0.0.1:$port/models/resnet20.pt"
    spark.sparkContext.hadoopConfiguration.set("ipc.client.connect.max.retries", "0")
    val jobsBefore = spark.sparkContext.statusTracker.getJobIdsForGroup(null).length
    val images = TorchSpark.readImages(spark, fixtures.resolve("images").toString)
    val e = assertThrows(
      classOf[ModelLoadException],
      () => new ImageScorer().setModelPath(uri).setInputCol("content").transform(images)
    )
    assertTrue(e.getMessage, e.getMessage.contains(s"cannot reach model $uri"))
    assertEquals(
      "no job ran",
      jobsBefore,
      spark.sparkContext.statusTracker.getJobIdsForGroup(null).length
    )
  }

  @Test def readImagesGivesAFewPartitionsPerSlot(): Unit = {
    val dir = fixtures.resolve("images").toString
    val files = new File(dir).listFiles().length
    // Spark's default open cost, and splits small enough that every file is its own partition,
    // as 10,000 files are with the defaults.
    spark.conf.set("spark.sql.files.openCostInBytes", (4L << 20).toString)
    spark.conf.set("spark.sql.files.maxPartitionBytes", (4L << 20).toString)
    try {
      assertEquals(files, spark.read.format("binaryFile").load(dir).rdd.getNumPartitions)
      val df = TorchSpark.readImages(spark, dir)
      assertEquals(files.toLong, df.count())
      assertEquals(math.min(files, 2 * 3), df.rdd.getNumPartitions)
    } finally {
      spark.conf.unset("spark.sql.files.openCostInBytes")
      spark.conf.unset("spark.sql.files.maxPartitionBytes")
    }
    val pngs = new File(dir).listFiles().count(_.getName.endsWith(".png"))
    assertEquals(pngs.toLong, TorchSpark.readImages(spark, dir, "*.png").count())
  }

  @Test def doctorChecksEveryExecutor(): Unit = {
    val rows = TorchSpark.doctor(spark)
    assertEquals(1, rows.size) // local mode: the driver is the one executor
    val r = rows.head
    assertTrue(r.status, r.ok)
    assertEquals("driver", r.executor)
    assertTrue(r.status, r.status.contains("tiny model"))
    assertTrue(r.glibc, r.glibc.matches("node has \\d+\\.\\d+; torchspark needs \\d+\\.\\d+"))
  }
}
