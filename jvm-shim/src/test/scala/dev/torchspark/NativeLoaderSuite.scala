package dev.torchspark

import java.nio.file.{Files, LinkOption, Path}
import java.nio.file.attribute.PosixFilePermissions

import org.junit.Test
import org.junit.Assert._

/** The library the jar carries is extracted where only this user can write, and a file found there
  * is used only when it holds exactly the jar's bytes (extract() on a given directory; no
  * System.load, so a fake is never run even when the test fails).
  */
class NativeLoaderSuite {

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
    val base = Files.createTempDirectory("torchspark-native")
    val so = NativeLoader.extract(base)
    assertTrue(so.startsWith(base.resolve(s"torchspark-${System.getProperty("user.name")}")))
    assertArrayEquals(jarBytes, Files.readAllBytes(so))
    assertEquals("0700", mode(so.getParent))
    assertEquals("0700", mode(so.getParent.getParent))
    assertEquals("0600", mode(so))
  }

  @Test def aSameSizeFakeLibraryIsReplacedNotLoaded(): Unit = {
    val base = Files.createTempDirectory("torchspark-native")
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
    val where = NativeLoader.extract(Files.createTempDirectory("torchspark-native"))
    val base = Files.createTempDirectory("torchspark-native")
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
