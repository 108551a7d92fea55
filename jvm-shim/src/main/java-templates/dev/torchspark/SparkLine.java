package dev.torchspark;

/**
 * The Spark line this build is for. A template: Maven's resource filtering writes it into
 * target/generated-sources/spark-line with the active profile's {@code spark.line} and {@code
 * scala.binary.version} (jvm-shim/pom.xml), so both lines share this one file.
 */
final class SparkLine {
  private SparkLine() {}

  /** Spark major.minor that this jar was compiled against. */
  static final String SPARK = "${spark.line}";

  /** Scala binary version of that Spark line. */
  static final String SCALA = "${scala.binary.version}";

  /** This build's version: the Maven coordinates that error messages name carry it. */
  static final String VERSION = "${project.version}";
}
