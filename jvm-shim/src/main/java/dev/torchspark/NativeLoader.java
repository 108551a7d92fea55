package dev.torchspark;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.RandomAccessFile;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Loads libtorchspark.so once per JVM.
 *
 * <p>Order: libtorch first (so that executors need no LD_LIBRARY_PATH), from {@code
 * -Dtorchspark.libtorch.dir} or {@code TORCHSPARK_LIBTORCH_DIR}, else from the torch package that
 * the node's Python ({@code TORCHSPARK_PYTHON}, {@code PYSPARK_PYTHON} or {@code python3}) has
 * installed, else through the library's own RUNPATH. Then the library itself: from {@code
 * java.library.path}, else extracted from this jar into a directory only this user can write (see
 * {@link #extract}). A failure is kept and rethrown, with its causes, on every later use.
 *
 * <p>Nothing is ever loaded from the working directory (a driver started in a shared or downloaded
 * folder must not run what someone put there): the Python is asked in a private working directory
 * with {@code PYTHONSAFEPATH=1}, so its {@code sys.path} does not start with the JVM's working
 * directory, and relative entries of {@code java.library.path} (an empty one means the working
 * directory) are skipped.
 */
final class NativeLoader {
  /** The library and libtorch events, once per JVM (docs/logging.md). */
  static final Logger LOG = LoggerFactory.getLogger("dev.torchspark.native");

  private static final String LIB = "torchspark";
  private static final String RESOURCE = "/native/linux-x86_64/libtorchspark.so";
  private static volatile boolean loaded;
  private static volatile TorchSparkException failure;
  private static volatile String libtorchSource = "not loaded yet";
  // How libtorch's directory was found (a property, the environment, a Python), for the log.
  private static volatile String libtorchHow = "";

  private NativeLoader() {}

  /** This node's name, for messages that must say where something failed. */
  static String hostName() {
    try {
      return java.net.InetAddress.getLocalHost().getHostName();
    } catch (IOException e) {
      String h = System.getenv("HOSTNAME");
      return h != null ? h : "unknown-host";
    }
  }

  static synchronized void load() {
    if (loaded) {
      return;
    }
    if (failure != null) {
      throw failure;
    }
    List<String> tried = new ArrayList<>();
    try {
      checkGlibc();
      long t0 = System.nanoTime();
      preloadLibtorch(tried);
      String from = loadLibrary(tried);
      loaded = true;
      LOG.info(
          "loaded libtorchspark from {} on host {} in {} s; libtorch from {}{}",
          from,
          hostName(),
          String.format(java.util.Locale.ROOT, "%.2f", (System.nanoTime() - t0) / 1e9),
          libtorchSource,
          libtorchHow.isEmpty() ? "" : " (" + libtorchHow + ")");
    } catch (Throwable t) {
      String hint = missingLibraryHint(t);
      failure =
          new ModelLoadException(
              "cannot load the torchspark native library on host "
                  + hostName()
                  + " ("
                  + t
                  + "); tried: "
                  + String.join("; ", tried)
                  + ". "
                  + (hint != null
                      ? hint
                      : "Install torch==2.13.0 on every node (pip) or set TORCHSPARK_LIBTORCH_DIR"
                          + " to libtorch's lib/ directory"),
              t);
      LOG.error(failure.getMessage());
      throw failure;
    }
  }

  private static final java.util.regex.Pattern MISSING =
      java.util.regex.Pattern.compile(
          "([\\w.+-]+\\.so(?:\\.\\d+)*): cannot open shared object file");

  /**
   * For a load that failed because the dynamic linker found no {@code libX.so.N} (a CPU node whose
   * torch came without {@code nvidia-cuda-runtime}, say): which library, the pip package and pin
   * that bring it, and the command that installs it; null when the failure is something else. The
   * table is the wheel's ({@code torchspark/data/cuda-libraries.txt}, pins from {@code
   * torch-cpu*.txt}), also read by {@code python -m torchspark.node check}.
   */
  static String missingLibraryHint(Throwable t) {
    String lib = null;
    for (Throwable c = t; c != null && lib == null; c = c.getCause()) {
      java.util.regex.Matcher m = MISSING.matcher(String.valueOf(c.getMessage()));
      if (m.find()) {
        lib = m.group(1);
      }
    }
    if (lib == null) {
      return null;
    }
    String pkg = null;
    for (String line : resourceLines("cuda-libraries.txt")) {
      String[] f = line.trim().split("\\s+");
      if (f.length == 2 && !line.startsWith("#") && f[0].equals(lib)) {
        pkg = f[1];
      }
    }
    if (pkg == null) {
      return "libtorch or torchspark needs "
          + lib
          + ", which the dynamic linker does not find on this node; install it or add its"
          + " directory to LD_LIBRARY_PATH (python -m torchspark.node check names what is"
          + " missing)";
    }
    String pin = pkg;
    for (String file : new String[] {"torch-cpu.txt", "torch-cpu-python.txt"}) {
      for (String line : resourceLines(file)) {
        if (line.startsWith(pkg + "==")) {
          pin = line.trim();
        }
      }
    }
    return "libtorch needs "
        + lib
        + ", which this node does not have: it comes with the pip package "
        + pin
        + " (torch 2.13.0's own requirement). Install it into the Python that has torch"
        + " (pip install --no-deps "
        + pin
        + "), or set the node up with python -m torchspark.node setup --cpu, which installs"
        + " torch with exactly the libraries it needs (docs/install-node.md)";
  }

  private static List<String> resourceLines(String name) {
    try (InputStream in = NativeLoader.class.getResourceAsStream("/torchspark/data/" + name)) {
      return in == null
          ? List.of()
          : Arrays.asList(new String(in.readAllBytes(), StandardCharsets.UTF_8).split("\n"));
    } catch (IOException e) {
      return List.of();
    }
  }

  private static void preloadLibtorch(List<String> tried) {
    String dir = System.getProperty("torchspark.libtorch.dir");
    String how = "-Dtorchspark.libtorch.dir";
    if (dir == null || dir.isEmpty()) {
      dir = System.getenv("TORCHSPARK_LIBTORCH_DIR");
      how = "TORCHSPARK_LIBTORCH_DIR";
    }
    if (dir == null || dir.isEmpty()) {
      dir = torchLibFromPython(tried);
      how = "the torch package of " + torchPython;
    }
    if (dir == null) {
      tried.add("no libtorch directory found; relying on the library's RUNPATH");
      libtorchSource = "not found (library RUNPATH)";
      return;
    }
    for (String name : new String[] {"libc10.so", "libtorch_cpu.so"}) {
      File f = new File(dir, name);
      if (!f.isFile()) {
        tried.add(f + " does not exist");
        return;
      }
      System.load(f.getAbsolutePath());
    }
    tried.add("libtorch from " + dir);
    libtorchSource = dir;
    libtorchHow = how;
  }

  /** Where libtorch was loaded from, for the doctor. */
  static String libtorchSource() {
    return libtorchSource;
  }

  /** The newest glibc the embedded library references (written at build time), or "unknown". */
  static String glibcNeeded() {
    try (InputStream in = NativeLoader.class.getResourceAsStream(RESOURCE + ".glibc")) {
      return in == null ? "unknown" : new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
    } catch (IOException e) {
      return "unknown";
    }
  }

  /** This node's glibc version ({@code getconf GNU_LIBC_VERSION}), or "unknown". */
  static String nodeGlibc() {
    try {
      Process p =
          new ProcessBuilder("getconf", "GNU_LIBC_VERSION")
              .directory(new File("/"))
              .redirectErrorStream(true)
              .start();
      String out;
      try (InputStream in = p.getInputStream()) {
        out = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
      }
      p.waitFor(10, TimeUnit.SECONDS);
      java.util.regex.Matcher m = java.util.regex.Pattern.compile("(\\d+\\.\\d+)").matcher(out);
      return m.find() ? m.group(1) : "unknown";
    } catch (IOException | InterruptedException e) {
      return "unknown";
    }
  }

  /** A node older than the library's glibc gets a plain sentence, not a linker error. */
  private static void checkGlibc() {
    String need = glibcNeeded();
    String have = nodeGlibc();
    if (!need.equals("unknown") && !have.equals("unknown") && older(have, need)) {
      throw new IllegalStateException(
          "this node (" + hostName() + ") has glibc " + have + "; torchspark needs " + need);
    }
  }

  static boolean older(String a, String b) {
    String[] x = a.split("\\.");
    String[] y = b.split("\\.");
    for (int i = 0; i < Math.max(x.length, y.length); i++) {
      int u = i < x.length ? Integer.parseInt(x[i]) : 0;
      int v = i < y.length ? Integer.parseInt(y[i]) : 0;
      if (u != v) {
        return u < v;
      }
    }
    return false;
  }

  /**
   * Asks the node's Python where torch lives, without importing it (fast).
   *
   * <p>{@code python -c} puts its working directory first on {@code sys.path}, so a {@code torch}
   * planted in the JVM's working directory would be the answer (and its {@code lib/} loaded). So it
   * runs in {@code /} (only root can write there) with {@code PYTHONSAFEPATH=1} (Python 3.11+ then
   * adds no such entry at all); {@code PYTHONPATH} and user site-packages still count, as they do
   * for the Python workers ({@code -I} would drop them). A configured Python given as a relative
   * path ({@code ./environment/bin/python} in a YARN container) is resolved against the JVM's
   * working directory first: that one was chosen by the user.
   */
  // The Python whose torch package gave libtorch, for the log line.
  private static String torchPython = "no Python";

  private static String torchLibFromPython(List<String> tried) {
    List<String> pythons = new ArrayList<>();
    for (String env : new String[] {"TORCHSPARK_PYTHON", "PYSPARK_PYTHON"}) {
      String p = System.getenv(env);
      if (p != null && !p.isEmpty()) {
        pythons.add(p.contains("/") ? new File(p).getAbsolutePath() : p);
      }
    }
    pythons.add("python3");
    String code =
        "import importlib.util,os;s=importlib.util.find_spec('torch');"
            + "print(os.path.join(os.path.dirname(s.origin),'lib') if s else '')";
    for (String python : pythons) {
      try {
        ProcessBuilder pb =
            new ProcessBuilder(python, "-c", code)
                .directory(new File("/"))
                .redirectErrorStream(true);
        pb.environment().put("PYTHONSAFEPATH", "1");
        Process p = pb.start();
        String out;
        try (InputStream in = p.getInputStream()) {
          out = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
        }
        if (p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0 && !out.isEmpty()) {
          if (new File(out).isAbsolute() && new File(out, "libtorch_cpu.so").isFile()) {
            torchPython = python;
            return out;
          }
        }
        tried.add(python + " has no torch package");
      } catch (IOException | InterruptedException e) {
        tried.add(python + ": " + e.getMessage());
      }
    }
    return null;
  }

  /**
   * {@code lib<name>.so} in the absolute directories of {@code java.library.path}, or null. What
   * {@code System.loadLibrary} would do, minus its relative entries: the JDK reads an empty entry
   * (as {@code LD_LIBRARY_PATH=:/x} gives) as the working directory.
   */
  static Path onLibraryPath(String name, List<String> tried) {
    String file = System.mapLibraryName(name);
    for (String dir : System.getProperty("java.library.path", "").split(File.pathSeparator, -1)) {
      Path candidate = Paths.get(dir.isEmpty() ? "." : dir, file);
      if (!Paths.get(dir.isEmpty() ? "." : dir).isAbsolute()) {
        if (Files.exists(candidate)) {
          tried.add(
              "ignored "
                  + candidate.toAbsolutePath()
                  + ": java.library.path entry `"
                  + dir
                  + "` is relative (the working directory); give absolute directories");
        }
        continue;
      }
      if (Files.isRegularFile(candidate)) {
        return candidate;
      }
    }
    return null;
  }

  /** Loads the library; returns where from, for the log line. */
  private static String loadLibrary(List<String> tried) throws IOException {
    Path onPath = onLibraryPath(LIB, tried);
    if (onPath != null) {
      try {
        System.load(onPath.toString());
        tried.add(onPath + " from java.library.path");
        return onPath + " (java.library.path)";
      } catch (UnsatisfiedLinkError e) {
        // Found but failed to link: say so, then try the jar's copy.
        tried.add(onPath + ": " + e.getMessage());
      }
    }
    // Not on java.library.path (the usual case): use the copy inside the jar.
    Path file = extract(Paths.get(System.getProperty("java.io.tmpdir")));
    tried.add("extracted " + file);
    System.load(file.toString());
    return file + " (extracted from the jar)";
  }

  /**
   * Writes the jar's library to {@code base/torchspark-<user>/native-<hash>/libtorchspark.so}
   * (hash: of its content) unless the same bytes are already there, and returns that path.
   *
   * <p>What {@code System.load} runs must be exactly the jar's bytes: both directories are created
   * 0700 and checked by {@link PrivateDir} (a directory another user owns or can write is refused),
   * and a file already there is reused only when its whole content equals the jar's; anything else
   * (another size, same size but other bytes, not this user's) is replaced.
   *
   * @throws ModelLoadException when a directory is not this user's alone (naming it)
   */
  static Path extract(Path base) throws IOException {
    byte[] bytes;
    try (InputStream in = NativeLoader.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new IOException(RESOURCE + " is not in the jar (built without `make native`?)");
      }
      bytes = in.readAllBytes();
    }
    String hash;
    try {
      byte[] d = MessageDigest.getInstance("SHA-256").digest(bytes);
      StringBuilder sb = new StringBuilder();
      for (int i = 0; i < 8; i++) {
        sb.append(String.format("%02x", d[i]));
      }
      hash = sb.toString();
    } catch (java.security.NoSuchAlgorithmException e) {
      throw new IOException(e);
    }
    String what = "the torchspark native library directory";
    String remedy =
        "Remove it if it is not yours (or ask root to), or give the JVM -Djava.io.tmpdir=<a"
            + " directory that only this user can write>";
    Path root =
        PrivateDir.ensure(
            base.resolve("torchspark-" + System.getProperty("user.name")), what, remedy);
    Path dir = PrivateDir.ensure(root.resolve("native-" + hash), what, remedy);
    Path target = dir.resolve("libtorchspark.so");
    // Several executors (JVMs) on one node may extract at once: serialize with a file lock,
    // write to a temp name (0600), then move into place atomically.
    try (FileChannel ch = new RandomAccessFile(dir.resolve(".lock").toFile(), "rw").getChannel();
        FileLock lock = ch.lock()) {
      if (!sameContent(target, bytes)) {
        Path tmp = Files.createTempFile(dir, "libtorchspark", ".tmp");
        try {
          Files.write(tmp, bytes);
          Files.move(
              tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
          Files.deleteIfExists(tmp);
        }
      }
    }
    PrivateDir.check(target, false, "the extracted native library", remedy);
    return target;
  }

  /**
   * True when {@code f} is this user's regular file, unwritable by others, holding {@code bytes}.
   */
  private static boolean sameContent(Path f, byte[] bytes) throws IOException {
    return PrivateDir.problem(f, false) == null
        && Files.size(f) == bytes.length
        && Arrays.equals(Files.readAllBytes(f), bytes);
  }
}
