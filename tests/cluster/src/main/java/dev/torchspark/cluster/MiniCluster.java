package dev.torchspark.cluster;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;
import java.util.TreeMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

/**
 * HDFS (1 datanode) and YARN (1 NodeManager) in one JVM, for the cluster tests: the shape of an
 * HDInsight/EMR cluster, on this machine.
 *
 * <pre>MiniCluster WORK_DIR [NM_MEMORY_MB [NM_VCORES [LOCAL=HDFS_PATH ...]]]</pre>
 *
 * <p>Each LOCAL=HDFS_PATH is copied onto HDFS before the cluster reports ready.
 *
 * <p>Writes a minimal Hadoop conf dir (WORK_DIR/conf) for spark-submit, prints one line {@code
 * MINICLUSTER READY <json>} and stays up until stdin closes (or the process is killed).
 */
public final class MiniCluster {
  private MiniCluster() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println("usage: MiniCluster WORK_DIR [NM_MEMORY_MB] [NM_VCORES]");
      System.exit(2);
    }
    Path work = Paths.get(args[0]).toAbsolutePath();
    int memoryMb = args.length > 1 ? Integer.parseInt(args[1]) : 6144;
    int vcores = args.length > 2 ? Integer.parseInt(args[2]) : 4;
    Files.createDirectories(work);
    long t0 = System.nanoTime();

    Configuration hconf = new Configuration();
    hconf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, work.resolve("dfs").toString());
    hconf.set("dfs.namenode.http-address", "127.0.0.1:0");
    hconf.setInt("dfs.replication", 1);
    MiniDFSCluster dfs = new MiniDFSCluster.Builder(hconf).numDataNodes(1).format(true).build();
    dfs.waitActive();
    String fs = dfs.getFileSystem().getUri().toString();
    System.err.printf("minicluster: HDFS up at %s in %.1f s%n", fs, (System.nanoTime() - t0) / 1e9);
    for (int i = 3; i < args.length; i++) {
      String[] kv = args[i].split("=", 2);
      dfs.getFileSystem()
          .copyFromLocalFile(
              new org.apache.hadoop.fs.Path(kv[0]), new org.apache.hadoop.fs.Path(kv[1]));
    }

    YarnConfiguration yconf = new YarnConfiguration(hconf);
    yconf.set("fs.defaultFS", fs);
    // The default CapacityScheduler needs a capacity-scheduler.xml ("Failed to initialize
    // queues"); Spark's YarnClusterSuite uses the FIFO one too.
    yconf.set(
        YarnConfiguration.RM_SCHEDULER,
        "org.apache.hadoop.yarn.server.resourcemanager.scheduler.fifo.FifoScheduler");
    // Executors are JVMs with libtorch mapped: virtual memory is far above the physical.
    yconf.setBoolean(YarnConfiguration.NM_VMEM_CHECK_ENABLED, false);
    // MiniYARNCluster gives its NodeManagers this key's value (default 4096), not NM_PMEM_MB's.
    yconf.setInt(YarnConfiguration.YARN_MINICLUSTER_NM_PMEM_MB, memoryMb);
    yconf.setInt(YarnConfiguration.NM_PMEM_MB, memoryMb);
    yconf.setInt(YarnConfiguration.NM_VCORES, vcores);
    yconf.setInt(YarnConfiguration.RM_SCHEDULER_MINIMUM_ALLOCATION_MB, 128);
    yconf.setInt(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_MB, memoryMb);
    // A nearly full shared disk must not mark the only NodeManager unhealthy.
    yconf.set(
        "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage", "100.0");
    yconf.setInt("yarn.nodemanager.delete.debug-delay-sec", 3600);

    // MiniYARNCluster puts its dirs under ./target/<name>: the caller runs us in WORK_DIR.
    MiniYARNCluster yarn = new MiniYARNCluster("torchspark", 1, 1, 1);
    yarn.init(yconf);
    yarn.start();
    Configuration live = yarn.getConfig();
    long deadline = System.currentTimeMillis() + 120_000;
    while (live.get(YarnConfiguration.RM_ADDRESS).endsWith(":0")
        || yarn.getResourceManager().getRMContext().getRMNodes().isEmpty()) {
      if (System.currentTimeMillis() > deadline) {
        throw new IllegalStateException("YARN NodeManager did not register within 120 s");
      }
      Thread.sleep(100);
    }

    System.err.printf("minicluster: YARN up in %.1f s%n", (System.nanoTime() - t0) / 1e9);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  yarn.stop();
                  dfs.shutdown();
                }));

    // The full config carries test-only keys (e.g. org.apache.hadoop.net.StaticMapping, absent
    // from the client jars): clients get only what they need.
    Path confDir = work.resolve("conf");
    Files.createDirectories(confDir);
    Map<String, String> core = new TreeMap<>();
    core.put("fs.defaultFS", fs);
    write(confDir.resolve("core-site.xml"), core);
    Map<String, String> hdfs = new TreeMap<>();
    hdfs.put("dfs.replication", "1");
    write(confDir.resolve("hdfs-site.xml"), hdfs);
    Map<String, String> ysite = new TreeMap<>();
    for (String k :
        new String[] {
          YarnConfiguration.RM_ADDRESS,
          YarnConfiguration.RM_SCHEDULER_ADDRESS,
          YarnConfiguration.RM_RESOURCE_TRACKER_ADDRESS,
          YarnConfiguration.RM_ADMIN_ADDRESS,
          YarnConfiguration.RM_WEBAPP_ADDRESS,
        }) {
      ysite.put(k, live.get(k));
    }
    ysite.put(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_MB, Integer.toString(memoryMb));
    write(confDir.resolve("yarn-site.xml"), ysite);

    System.out.printf(
        "MINICLUSTER READY {\"fs\": \"%s\", \"rm\": \"%s\", \"conf\": \"%s\", \"pid\": %d}%n",
        fs, live.get(YarnConfiguration.RM_ADDRESS), confDir, ProcessHandle.current().pid());
    System.out.flush();

    // Up until the test session closes our stdin.
    while (System.in.read() != -1) {
      // ignore input
    }
    System.exit(0);
  }

  private static void write(Path file, Map<String, String> props) throws IOException {
    StringBuilder sb = new StringBuilder("<?xml version=\"1.0\"?>\n<configuration>\n");
    for (Map.Entry<String, String> e : props.entrySet()) {
      sb.append("  <property><name>")
          .append(e.getKey())
          .append("</name><value>")
          .append(e.getValue())
          .append("</value></property>\n");
    }
    sb.append("</configuration>\n");
    try (OutputStream out = Files.newOutputStream(file)) {
      out.write(sb.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8));
    }
  }
}
