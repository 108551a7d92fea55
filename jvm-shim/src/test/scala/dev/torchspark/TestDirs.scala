package dev.torchspark

import java.io.IOException
import java.nio.file.{FileVisitResult, Files, Path, SimpleFileVisitor}
import java.nio.file.attribute.{BasicFileAttributes, PosixFilePermissions}

/** The suites' scratch folders (model stores, node caches, saved pipelines, extracted libraries):
  * all under one folder per test JVM in `java.io.tmpdir`, removed when the JVM exits, so that runs
  * never pile them up in /tmp (a CI run's set-up once stopped on a full disk).
  */
object TestDirs {
  private lazy val root: Path = {
    val r = Files.createTempDirectory("torchspark-tests")
    Runtime.getRuntime.addShutdownHook(new Thread(() => deleteTree(r), "torchspark-tests-cleanup"))
    r
  }

  /** A new folder (0700) under this JVM's scratch root. */
  def dir(prefix: String): Path = Files.createTempDirectory(root, prefix)

  /** A new file (0600) under this JVM's scratch root. */
  def file(prefix: String, suffix: String): Path = Files.createTempFile(root, prefix, suffix)

  /** Deletes `top` and everything under it, never following a link; what cannot go stays. */
  def deleteTree(top: Path): Unit = {
    try {
      Files.walkFileTree(
        top,
        new SimpleFileVisitor[Path] {
          override def preVisitDirectory(d: Path, a: BasicFileAttributes): FileVisitResult = {
            // Some suites make folders read-only or others' on purpose: open them to delete.
            try Files.setPosixFilePermissions(d, PosixFilePermissions.fromString("rwx------"))
            catch { case _: IOException => () }
            FileVisitResult.CONTINUE
          }
          override def visitFile(f: Path, a: BasicFileAttributes): FileVisitResult = {
            try Files.deleteIfExists(f)
            catch { case _: IOException => () }
            FileVisitResult.CONTINUE
          }
          override def visitFileFailed(f: Path, e: IOException): FileVisitResult =
            FileVisitResult.CONTINUE
          override def postVisitDirectory(d: Path, e: IOException): FileVisitResult = {
            try Files.deleteIfExists(d)
            catch { case _: IOException => () }
            FileVisitResult.CONTINUE
          }
        }
      )
    } catch { case _: IOException => () }
  }
}
