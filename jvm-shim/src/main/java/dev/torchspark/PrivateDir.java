package dev.torchspark;

import java.io.IOException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The rule for every directory and file that torchspark writes and later trusts (the node's model
 * cache, the extracted native library): it must be this user's alone, as OpenSSH demands of {@code
 * ~/.ssh}. A directory or file is trusted when it is not a symbolic link, is owned by the JVM's
 * user, and is not writable by group or others; no ancestor of a trusted directory is writable by
 * group or others unless it is sticky (as {@code /tmp} is: others can create entries there but not
 * rename or delete ours). An ancestor's owner is not checked: on YARN a container's tmp dir lies
 * under the NodeManager's directories, owned by its service user. Anything else is refused, never
 * repaired: it may be another user's, and its presence is worth reporting.
 *
 * <p>The ancestors are every directory the kernel looks a name up in while it resolves the path
 * ({@link #resolutionDirs}): those of the path as written and, through each symbolic link on the
 * way, those of its target. Once they pass, no other user can rename or replace anything between
 * the check and the use of a path (only root, and the owners of ancestors others cannot write).
 */
final class PrivateDir {
  private static final int STICKY = 01000;
  private static final int GROUP_OR_OTHERS_WRITE = 0022;
  private static volatile Integer uid;

  private PrivateDir() {}

  /** The uid of this JVM's user (the owner its new files get). */
  static int myUid() {
    Integer u = uid;
    if (u == null) {
      u = (int) new com.sun.security.auth.module.UnixSystem().getUid();
      uid = u;
    }
    return u;
  }

  /**
   * Creates {@code dir} and its missing parents with mode 0700, then checks it and its ancestors.
   *
   * @param what what the directory is, for the message ("the torchspark model cache")
   * @param remedy what the user can do instead, appended to a refusal
   * @throws ModelLoadException naming the directory, its owner, its mode and the remedy
   */
  static Path ensure(Path dir, String what, String remedy) {
    Path abs = dir.toAbsolutePath().normalize();
    List<Path> missing = new ArrayList<>();
    for (Path p = abs;
        p != null && !Files.exists(p, LinkOption.NOFOLLOW_LINKS);
        p = p.getParent()) {
      missing.add(0, p);
    }
    // Before anything is made: the directories new ones would be made in must pass too.
    checkAncestors(missing.isEmpty() ? abs : missing.get(0), abs, what, remedy);
    for (Path p : missing) {
      try {
        Files.createDirectory(
            p, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
      } catch (FileAlreadyExistsException e) {
        // Another executor made it first: it is checked below like any existing directory.
      } catch (IOException e) {
        throw new ModelLoadException(
            "cannot create "
                + what
                + " directory "
                + p
                + " on host "
                + NativeLoader.hostName()
                + ": "
                + e
                + "; "
                + remedy,
            e);
      }
    }
    checkAncestors(abs, abs, what, remedy);
    check(abs, true, what, remedy);
    return abs;
  }

  /**
   * Refuses {@code abs} (named in the message) when a directory {@code p} resolves through fails.
   */
  private static void checkAncestors(Path p, Path abs, String what, String remedy) {
    List<Map.Entry<Path, Path>> ancestors;
    try {
      ancestors = resolutionDirs(p);
    } catch (IOException e) {
      throw refusal(what, abs, "cannot be resolved (" + e.getMessage() + ")", remedy);
    }
    for (Map.Entry<Path, Path> a : ancestors) {
      String why = ancestorProblem(a.getKey());
      if (why != null) {
        String via =
            a.getValue() == null ? "" : " (reached through the symbolic link " + a.getValue() + ")";
        throw refusal(what, abs, "its ancestor " + a.getKey() + via + " " + why, remedy);
      }
    }
  }

  /**
   * Every directory the kernel looks a name up in while it resolves {@code abs} (absolute), in
   * order, each with the symbolic link that led there (null for the path as written): the
   * directories of {@code abs} itself and, for each link on the way, those of its target, followed
   * as the kernel follows them ({@code ..} after a link is its target's parent). Whoever can write
   * one of them can swap what {@code abs} names. The last component is not followed: it is checked
   * as itself.
   *
   * @throws IOException a link cannot be read, or more than 40 links (a loop)
   */
  static List<Map.Entry<Path, Path>> resolutionDirs(Path abs) throws IOException {
    Deque<String> todo = new ArrayDeque<>();
    for (Path name : abs) {
      todo.addLast(name.toString());
    }
    Map<Path, Path> dirs = new LinkedHashMap<>();
    Path cur = abs.getRoot();
    Path via = null;
    int links = 0;
    while (!todo.isEmpty()) {
      String name = todo.pollFirst();
      if (name.isEmpty() || name.equals(".")) {
        continue;
      }
      if (name.equals("..")) {
        cur = cur.getParent() != null ? cur.getParent() : cur;
        continue;
      }
      dirs.putIfAbsent(cur, via);
      Path next = cur.resolve(name);
      if (todo.isEmpty()) {
        break;
      }
      if (Files.isSymbolicLink(next)) {
        if (++links > 40) {
          throw new IOException("more than 40 symbolic links (a loop?) on the way to " + abs);
        }
        Path target = Files.readSymbolicLink(next);
        List<String> parts = new ArrayList<>();
        for (Path part : target) {
          parts.add(part.toString());
        }
        for (int i = parts.size() - 1; i >= 0; i--) {
          todo.addFirst(parts.get(i));
        }
        if (target.isAbsolute()) {
          cur = target.getRoot();
        }
        via = next;
      } else {
        cur = next;
      }
    }
    return new ArrayList<>(dirs.entrySet());
  }

  /**
   * Checks that {@code p} (a directory when {@code dir}) is trusted: not a link, this user's, not
   * writable by group or others.
   *
   * @throws ModelLoadException naming it, its owner and mode, and the remedy
   */
  static void check(Path p, boolean dir, String what, String remedy) {
    String why = problem(p, dir);
    if (why != null) {
      throw refusal(what, p, why, remedy);
    }
  }

  /** Why {@code p} is not trusted, or null when it is (a missing file is a problem too). */
  static String problem(Path p, boolean dir) {
    Map<String, Object> a;
    try {
      a = Files.readAttributes(p, "unix:uid,mode", LinkOption.NOFOLLOW_LINKS);
    } catch (IOException e) {
      return "cannot be examined (" + e + ")";
    }
    int mode = (Integer) a.get("mode");
    int owner = (Integer) a.get("uid");
    int type = mode & 0170000;
    List<String> why = new ArrayList<>();
    if (type == 0120000) {
      why.add("is a symbolic link");
    } else if (dir && type != 0040000) {
      why.add("is not a directory");
    } else if (!dir && type != 0100000) {
      why.add("is not a regular file");
    }
    if (owner != myUid()) {
      why.add("is owned by " + ownerName(p, owner) + " instead of " + ownerName(null, myUid()));
    }
    if ((mode & GROUP_OR_OTHERS_WRITE) != 0) {
      why.add("is writable by group or others");
    }
    return why.isEmpty()
        ? null
        : String.join(" and ", why)
            + " (owner "
            + ownerName(p, owner)
            + ", mode "
            + octal(mode)
            + ")";
  }

  private static String ancestorProblem(Path p) {
    Map<String, Object> a;
    try {
      // A directory the path resolves through (links already followed by resolutionDirs).
      a = Files.readAttributes(p, "unix:uid,mode", LinkOption.NOFOLLOW_LINKS);
    } catch (IOException e) {
      return "cannot be examined (" + e + ")";
    }
    int mode = (Integer) a.get("mode");
    int owner = (Integer) a.get("uid");
    if ((mode & GROUP_OR_OTHERS_WRITE) != 0 && (mode & STICKY) == 0) {
      return "has mode "
          + octal(mode)
          + ": writable by group or others and not sticky, so they could replace what is below it";
    }
    // A sticky directory's owner may still rename anything in it: only root's (as /tmp) or ours.
    if ((mode & GROUP_OR_OTHERS_WRITE) != 0 && owner != 0 && owner != myUid()) {
      return "is writable by others and owned by "
          + ownerName(p, owner)
          + " (mode "
          + octal(mode)
          + "), who could replace what is below it";
    }
    return null;
  }

  private static ModelLoadException refusal(String what, Path p, String why, String remedy) {
    return new ModelLoadException(
        "refusing "
            + what
            + " "
            + p
            + " on host "
            + NativeLoader.hostName()
            + ": "
            // "its ancestor ... has mode ..." or "it is owned by ...".
            + (why.startsWith("its ") ? why : "it " + why)
            + "; torchspark only trusts files that no other user can write. "
            + remedy);
  }

  static String octal(int mode) {
    return String.format("%04o", mode & 07777);
  }

  private static String ownerName(Path p, int id) {
    String name = null;
    try {
      name =
          p != null
              ? Files.getOwner(p, LinkOption.NOFOLLOW_LINKS).getName()
              : System.getProperty("user.name");
    } catch (IOException | RuntimeException e) {
      // The number alone is still a clear answer.
    }
    return (name == null || name.equals(String.valueOf(id)) ? "" : name + " ") + "(uid " + id + ")";
  }
}
