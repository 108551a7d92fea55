package dev.torchspark;

import java.io.File;

/**
 * Refuses, at first use and naming both lines, a jar built for another Spark line than the running
 * one: Scala 2.12 and 2.13 bytecode are not compatible, and the mismatch would otherwise surface as
 * a NoSuchMethodError inside a task. Plain Java, so that it runs before any Scala library call.
 * {@link SessionStartCheck} runs the same check when a session starts.
 */
public final class SparkLineCheck {
  /** The lines torchspark builds for, as shown in error messages. */
  static final String LINES = "Spark 3.5 (Scala 2.12) and Spark 4.1 (Scala 2.13)";

  /** Maven group of every torchspark artifact (artifact: torchspark-spark{line}_{scala}). */
  static final String GROUP = "dev.torchspark";

  private static volatile boolean checked;

  private SparkLineCheck() {}

  /** Throws a {@link ConfigException} when the running Spark or Scala differs from this build's. */
  public static void check() {
    if (checked) {
      return;
    }
    String problem = problem();
    if (problem != null) {
      throw new ConfigException(problem);
    }
    checked = true;
  }

  /** The error for this jar on the running Spark and Scala, or null when they are its line. */
  public static String problem() {
    String sparkVersion = org.apache.spark.package$.MODULE$.SPARK_VERSION();
    String scalaVersion = scala.util.Properties$.MODULE$.versionNumberString();
    return mismatch(sparkVersion, scalaVersion);
  }

  /** The error for a jar of this build on Spark {@code spark} / Scala {@code scala}, or null. */
  static String mismatch(String spark, String scala) {
    String line = majorMinor(spark);
    String scalaBinary = majorMinor(scala);
    if (line.equals(SparkLine.SPARK) && scalaBinary.equals(SparkLine.SCALA)) {
      return null;
    }
    String use;
    if ((line.equals("3.5") && scalaBinary.equals("2.12"))
        || (line.equals("4.1") && scalaBinary.equals("2.13"))) {
      String artifact = artifact(line, scalaBinary);
      use =
          "use the "
              + artifact
              + " jar: Maven coordinates "
              + coordinates(line, scalaBinary)
              + " (spark-submit --packages, spark.jars.packages), or from Python"
              + " torchspark.jar_path(), which picks the jar matching the installed pyspark";
    } else {
      use = "torchspark builds for " + LINES + " only";
    }
    return "torchspark: "
        + jarName()
        + " is built for Spark "
        + SparkLine.SPARK
        + " (Scala "
        + SparkLine.SCALA
        + ") but this is Spark "
        + spark
        + " (Scala "
        + scala
        + "); "
        + use;
  }

  /** The artifact (and jar name stem) of a line, e.g. torchspark-spark4.1_2.13. */
  static String artifact(String line, String scalaBinary) {
    return "torchspark-spark" + line + "_" + scalaBinary;
  }

  /** group:artifact:version of a line's artifact at this build's version. */
  static String coordinates(String line, String scalaBinary) {
    return GROUP + ":" + artifact(line, scalaBinary) + ":" + SparkLine.VERSION;
  }

  private static String majorMinor(String version) {
    String[] parts = version.split("[.-]");
    return parts.length >= 2 ? parts[0] + "." + parts[1] : version;
  }

  private static String jarName() {
    try {
      String path =
          SparkLineCheck.class.getProtectionDomain().getCodeSource().getLocation().getPath();
      return "this jar (" + new File(path).getName() + ")";
    } catch (RuntimeException e) {
      return "this torchspark jar";
    }
  }
}
