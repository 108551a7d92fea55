package dev.torchspark;

import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.SparkSessionExtensionsProvider;
import org.slf4j.LoggerFactory;
import scala.runtime.BoxedUnit;

/**
 * The Spark-line check at session start: Spark loads every {@code SparkSessionExtensionsProvider}
 * on the classpath (ServiceLoader, META-INF/services) when it builds a session, so a torchspark jar
 * of the wrong line is named in the driver's log before any query, with the coordinates that fix
 * it, and not only at first use. It injects nothing. Plain Java, like {@link SparkLineCheck}: it
 * loads and runs under either Scala version.
 */
public final class SessionStartCheck implements SparkSessionExtensionsProvider {
  private static volatile boolean logged;

  @Override
  public BoxedUnit apply(SparkSessionExtensions extensions) {
    // Logged, not thrown: Spark would catch it and log a warning with a stack trace instead.
    String problem = SparkLineCheck.problem();
    if (problem != null && !logged) {
      logged = true;
      LoggerFactory.getLogger(SessionStartCheck.class).error(problem);
    }
    return BoxedUnit.UNIT;
  }
}
