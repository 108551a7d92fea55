package dev.torchspark

import scala.util.Try

import org.apache.spark.{SparkEnv, TaskContext}

/** How big this executor's engine may be, and which GPU a task's `device="cuda"` means
  * (docs/design/shared-engine.md §2 and §4).
  *
  *   - `cores`: `spark.executor.cores` when set, else N of `local[N]` / `local[N,F]` (`*` meaning
  *     the host's processors), else the host's processors.
  *   - `taskCpus`: `spark.task.cpus` as the running task sees it (`TaskContext.cpus`), else 1.
  */
private[torchspark] object ExecutorCores {

  private val LocalN = """local\[(\d+|\*)(?:,\s*\d+)?\]""".r

  /** The executor's cores from its conf (`spark.executor.cores`, then the master URL). */
  def cores: Int = {
    val conf = Option(SparkEnv.get).map(_.conf)
    coresFrom(
      conf.flatMap(_.getOption("spark.executor.cores")),
      conf.flatMap(_.getOption("spark.master")),
      Runtime.getRuntime.availableProcessors()
    )
  }

  /** The rule of [[cores]] as a pure function: a positive `executorCores` wins, then N of
    * `local[N]` (`*` and bare `local` resolved as in Spark: `available` and 1), else `available`.
    */
  def coresFrom(executorCores: Option[String], master: Option[String], available: Int): Int = {
    val fromConf = executorCores.flatMap(s => Try(s.trim.toInt).toOption).filter(_ > 0)
    val fromMaster = master.map(_.trim).collect {
      case "local"                  => 1
      case LocalN(n) if n == "*"    => available
      case LocalN(n) if n.toInt > 0 => n.toInt
    }
    fromConf.orElse(fromMaster).getOrElse(available).max(1)
  }

  /** `spark.task.cpus` of the running task; 1 outside a task. */
  def taskCpus: Int = Option(TaskContext.get()).map(_.cpus()).getOrElse(1).max(1)

  /** Whether this JVM runs a local-mode Spark (the driver is the executor). */
  def isLocal: Boolean =
    Option(SparkEnv.get).flatMap(_.conf.getOption("spark.master")).exists(_.startsWith("local"))

  /** Devices CUDA shows this process: `CUDA_VISIBLE_DEVICES`' entries when set, else unknown. */
  def visibleDevices: Int =
    sys.env
      .get("CUDA_VISIBLE_DEVICES")
      .map(_.split(",").count(_.trim.nonEmpty))
      .getOrElse(Int.MaxValue)

  /** The task's GPU addresses (`TaskContext.resources()("gpu")`), if it was given any. */
  def taskGpuAddresses: Option[Seq[String]] =
    Option(TaskContext.get()).flatMap { ctx =>
      ctx.resources().get("gpu").map(_.addresses.toSeq).filter(_.nonEmpty)
    }

  /** The device a task opens for `device`: `cpu` and `cuda:N` as given; `cuda` (no index) is the
    * task's GPU from Spark's resource scheduling, `gpuAddresses`
    * (`spark.task.resource.gpu.amount`). An address at or past `deviceCount` with one visible
    * device is `cuda:0` (the container shows only the GPU it was given). Without a GPU resource:
    * `cuda:0` in local mode, else a [[DeviceException]] naming `host` and the confs to set.
    */
  def gpuDevice(
      device: String,
      gpuAddresses: Option[Seq[String]],
      deviceCount: Int,
      isLocal: Boolean,
      host: String
  ): String =
    if (device != "cuda") device
    else
      gpuAddresses.flatMap(_.headOption) match {
        case Some(address) =>
          Try(address.trim.toInt).toOption match {
            case Some(i) if i >= 0 && i < deviceCount => s"cuda:$i"
            case _ if deviceCount == 1                => "cuda:0"
            case _                                    =>
              throw new DeviceException(
                s"device=cuda on host $host: the task's GPU address `$address` is not one of " +
                  s"the $deviceCount devices CUDA shows this process (CUDA_VISIBLE_DEVICES); " +
                  "set device=cuda:N or fix the GPU discovery script"
              )
          }
        case None if isLocal => "cuda:0"
        case None            =>
          throw new DeviceException(
            s"device=cuda on host $host: this task was given no GPU; set " +
              "spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount (e.g. 0.25 " +
              "so that 4 tasks share one GPU) and spark.executor.resource.gpu.discoveryScript, " +
              "or set device=cuda:N"
          )
      }

  /** [[gpuDevice]] for the running task on this host. */
  def deviceForTask(device: String): String =
    gpuDevice(device, taskGpuAddresses, visibleDevices, isLocal, NativeLoader.hostName())
}
