package dev.torchspark

import java.io.IOException
import java.nio.charset.StandardCharsets
import java.nio.file.{Files, LinkOption, Path, Paths}
import java.nio.file.attribute.PosixFilePermissions
import java.util.concurrent.TimeUnit

import org.junit.Test
import org.junit.Assert._

/** Loads the library in a fresh JVM and prints where libtorch came from (NativeLoaderSuite runs it
  * in a working directory full of planted files).
  */
object NativeLoaderProbe {
  def main(args: Array[String]): Unit = {
    NativeLoader.load()
    println(s"LIBTORCH ${NativeLoader.libtorchSource()}")
    // With a model path: open it and exit with it still open (as an executor JVM does).
    args.headOption.foreach { model =>
      NativeBridge.openModel(NativeRunner.configJson(model, "cpu", 1, "fp32"))
      println(s"OPENED $model")
    }
    println(s"LOADS ${NativeBridge.loadCount()}")
    System.exit(0)
  }
}

/** The library the jar carries is extracted where only this user can write, and a file found there
  * is used only when it holds exactly the jar's bytes (extract() on a given directory; no
  * System.load, so a fake is never run even when the test fails). Nothing is loaded from the
  * working directory.
  */
class NativeLoaderSuite {

  /** A real shared library named `name` whose constructor appends to `marker`: what an attacker
    * would plant.
    */
  private def plantedLibrary(dir: Path, name: String, marker: Path): Unit = {
    val src = TestDirs.file("planted", ".c")
    Files.writeString(
      src,
      s"""#include <stdio.h>
         |__attribute__((constructor)) static void planted(void) {
         |  FILE* f = fopen("$marker", "a");
         |  if (f) { fputs("$name ran\\n", f); fclose(f); }
         |}
         |""".stripMargin
    )
    val cc =
      new ProcessBuilder("cc", "-shared", "-fPIC", "-o", dir.resolve(name).toString, src.toString)
        .inheritIO()
        .start()
    assertEquals(s"cc $name", 0, cc.waitFor())
  }

  @Test def aJvmThatExitsWithAPackageOpenLeavesNothingInTheTempDir(): Unit = {
    // libtorch's loader left $TMPDIR/aotinductor_XXXXXX behind for every package still loaded
    // at exit; the JVM's own files (java.io.tmpdir) do not go there.
    val tmp = TestDirs.dir("torchspark-tmpdir")
    val pt2 = SparkTest.fixtures.resolve("tuple_net_aoti.pt2").toString
    val java = Paths.get(System.getProperty("java.home"), "bin", "java").toString
    val pb = new ProcessBuilder(
      java,
      "-cp",
      System.getProperty("java.class.path"),
      "dev.torchspark.NativeLoaderProbe",
      pt2
    ).redirectErrorStream(true)
    pb.environment().put("TMPDIR", tmp.toString)
    val p = pb.start()
    val out = new String(p.getInputStream.readAllBytes(), StandardCharsets.UTF_8)
    assertTrue(out, p.waitFor(120, TimeUnit.SECONDS))
    assertEquals(out, 0, p.exitValue())
    assertTrue(out, out.contains(s"OPENED $pt2"))
    assertArrayEquals(out, Array.empty[AnyRef], Files.list(tmp).toArray)
  }

  @Test def neverLoadsATorchOrLibraryPlantedInTheWorkingDirectory(): Unit = {
    val cwd = TestDirs.dir("torchspark-cwd")
    val marker = cwd.resolve("MARKER")
    // What `python -c` finds first from here, and what the JDK reads `.` or an empty
    // java.library.path entry as.
    val lib = Files.createDirectories(cwd.resolve("torch/lib"))
    Files.writeString(
      cwd.resolve("torch/__init__.py"),
      s"open('$marker', 'a').write('torch/__init__.py ran\\n')\n"
    )
    Seq("libc10.so", "libtorch_cpu.so").foreach(plantedLibrary(lib, _, marker))
    plantedLibrary(cwd, "libtorchspark.so", marker)
    // In a fresh JVM from there: with libtorch found through the Python, then given.
    def probe(libtorchDir: Option[String]): String = {
      val java = Paths.get(System.getProperty("java.home"), "bin", "java").toString
      val pb = new ProcessBuilder(
        java,
        "-cp",
        System.getProperty("java.class.path"),
        "-Djava.library.path=:.",
        "dev.torchspark.NativeLoaderProbe"
      ).directory(cwd.toFile).redirectErrorStream(true)
      pb.environment().remove("TORCHSPARK_LIBTORCH_DIR")
      // The venv's Python (it has torch) by its absolute path, as a node's set-up names it:
      // `make test` does not put the venv on PATH, and `python3` there has no torch.
      val repo = Paths.get(System.getProperty("torchspark.repo", "..")).toAbsolutePath.normalize
      pb.environment().put("TORCHSPARK_PYTHON", repo.resolve(".venv/bin/python").toString)
      libtorchDir.foreach(pb.environment().put("TORCHSPARK_LIBTORCH_DIR", _))
      val p = pb.start()
      val out = new String(p.getInputStream.readAllBytes(), StandardCharsets.UTF_8)
      assertTrue(out, p.waitFor(120, TimeUnit.SECONDS))
      val ran = if (Files.exists(marker)) Files.readString(marker) else ""
      assertEquals(s"planted code ran: $ran\n$out", "", ran)
      assertEquals(out, 0, p.exitValue())
      val libtorch = out.linesIterator.collectFirst {
        case l if l.startsWith("LIBTORCH ") => l.drop(9)
      }
      assertTrue(out, libtorch.exists(d => d.endsWith("torch/lib") && !d.startsWith(cwd.toString)))
      libtorch.get
    }
    probe(Some(probe(None)))
  }

  @Test def aNodeWithoutACudaLibraryTorchNeedsIsToldThePackageAndTheCommand(): Unit = {
    // A CPU node whose torch came without nvidia-cuda-cupti/-runtime: libtorch_cpu.so NEEDS
    // libcupti.so.13 and libcudart.so.13 through its RPATH ($ORIGIN/../../nvidia/...). The real
    // libraries in a folder with no nvidia/ beside it give the real linker error.
    val repo = Paths.get(System.getProperty("torchspark.repo", "..")).toAbsolutePath.normalize
    val ask = new ProcessBuilder(
      repo.resolve(".venv/bin/python").toString,
      "-c",
      "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
    ).start()
    val real = Paths.get(new String(ask.getInputStream.readAllBytes(), StandardCharsets.UTF_8).trim)
    assertEquals(0, ask.waitFor())
    assertTrue(real.toString, Files.isRegularFile(real.resolve("libtorch_cpu.so")))
    val dir = TestDirs.dir("torchspark-nocuda")
    // Hard links (a copy across file systems): the JVM loads a symlink by its real path, whose
    // $ORIGIN would find nvidia/ again.
    Seq("libc10.so", "libtorch_cpu.so").foreach { n =>
      try Files.createLink(dir.resolve(n), real.resolve(n))
      catch { case _: IOException => Files.copy(real.resolve(n), dir.resolve(n)) }
    }
    val java = Paths.get(System.getProperty("java.home"), "bin", "java").toString
    val pb = new ProcessBuilder(
      java,
      "-cp",
      System.getProperty("java.class.path"),
      s"-Dtorchspark.libtorch.dir=$dir",
      "dev.torchspark.NativeLoaderProbe"
    ).redirectErrorStream(true)
    val p = pb.start()
    val out = new String(p.getInputStream.readAllBytes(), StandardCharsets.UTF_8)
    assertTrue(out, p.waitFor(120, TimeUnit.SECONDS))
    assertNotEquals(out, 0, p.exitValue())
    // Whichever of the two the linker meets first, named with its package, pin and the command.
    val named = Seq(
      "libcupti.so.13" -> "nvidia-cuda-cupti==13.0.85",
      "libcudart.so.13" -> "nvidia-cuda-runtime==13.0.96"
    ).filter { case (lib, _) =>
      out.contains(s"libtorch needs $lib, which this node does not have")
    }
    assertEquals(out, 1, named.size)
    val pin = named.head._2
    assertTrue(out, out.contains(s"pip install --no-deps $pin"))
    assertTrue(out, out.contains("python -m torchspark.node setup --cpu"))
    assertFalse(out, out.contains("Install torch==2.13.0 on every node"))
  }

  @Test def aLoadFailureThatIsNotAMissingLibraryKeepsTheGeneralAdvice(): Unit = {
    assertNull(NativeLoader.missingLibraryHint(new UnsatisfiedLinkError("undefined symbol: foo")))
    val other = NativeLoader.missingLibraryHint(
      new RuntimeException(new UnsatisfiedLinkError("libfoo.so.7: cannot open shared object file"))
    )
    assertTrue(other, other.contains("needs libfoo.so.7") && other.contains("LD_LIBRARY_PATH"))
  }

  private def jarBytes: Array[Byte] = {
    val in = classOf[NativeBridge].getResourceAsStream("/native/linux-x86_64/libtorchspark.so")
    assertNotNull("the jar's resources carry the library (make native)", in)
    try in.readAllBytes()
    finally in.close()
  }

  private def mode(p: Path): String =
    PrivateDir.octal(
      Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS).asInstanceOf[Int]
    )

  @Test def extractsIntoDirectoriesOnlyThisUserCanWrite(): Unit = {
    val base = TestDirs.dir("torchspark-native")
    val so = NativeLoader.extract(base)
    assertTrue(so.startsWith(base.resolve(s"torchspark-${System.getProperty("user.name")}")))
    assertArrayEquals(jarBytes, Files.readAllBytes(so))
    assertEquals("0700", mode(so.getParent))
    assertEquals("0700", mode(so.getParent.getParent))
    assertEquals("0600", mode(so))
  }

  @Test def aSameSizeFakeLibraryIsReplacedNotLoaded(): Unit = {
    val base = TestDirs.dir("torchspark-native")
    val so = NativeLoader.extract(base)
    val mtime = Files.getLastModifiedTime(so)
    Files.write(so, new Array[Byte](jarBytes.length)) // same size, other bytes, same inode
    Files.setLastModifiedTime(so, mtime)
    assertEquals(so, NativeLoader.extract(base))
    assertArrayEquals(jarBytes, Files.readAllBytes(so))
    // A same-size file this user owns but others may write is replaced too.
    Files.setPosixFilePermissions(so, PosixFilePermissions.fromString("rw-rw-rw-"))
    assertEquals(so, NativeLoader.extract(base))
    assertEquals("0600", mode(so))
  }

  @Test def refusesALibraryDirectoryPlantedByAnotherUser(): Unit = {
    val where = NativeLoader.extract(TestDirs.dir("torchspark-native"))
    val base = TestDirs.dir("torchspark-native")
    val userDir = base.resolve(where.getParent.getParent.getFileName)
    val planted = Files.createDirectories(userDir.resolve(where.getParent.getFileName))
    val fake = Files.write(planted.resolve("libtorchspark.so"), new Array[Byte](jarBytes.length))
    val nobody = base.getFileSystem.getUserPrincipalLookupService.lookupPrincipalByName("nobody")
    for (p <- Seq(userDir, planted, fake)) {
      Files.setOwner(p, nobody)
      Files.setPosixFilePermissions(p, PosixFilePermissions.fromString("rwxrwxrwx"))
    }
    val e = assertThrows(classOf[ModelLoadException], () => NativeLoader.extract(base))
    val m = e.getMessage
    assertTrue(m, m.contains(s"refusing the torchspark native library directory $userDir"))
    assertTrue(m, m.contains("nobody") && m.contains("0777") && m.contains("java.io.tmpdir"))
    assertArrayEquals("left as it was", new Array[Byte](jarBytes.length), Files.readAllBytes(fake))
  }
}
