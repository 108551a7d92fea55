package dev.torchspark;

/** The Spark line this build is for (this file exists once per line, in src/main/spark-4.1). */
final class SparkLine {
  private SparkLine() {}

  /** Spark major.minor that this jar was compiled against. */
  static final String SPARK = "4.1";

  /** Scala binary version of that Spark line. */
  static final String SCALA = "2.13";
}
