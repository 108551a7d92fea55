"""PySpark wrappers of the Scala transformers `dev.torchspark.ImageScorer`, `ImageFeaturizer`,
`TorchModel`, `TextEmbedder` and `TextClassifier`.

Same class names, same param names and defaults, `setX`/`getX`, keyword constructors,
save/load and Pipeline support. The work runs in the JVM executors (JNI), not in Python.
"""

from __future__ import annotations

import re

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLReadable, JavaMLWritable
from pyspark.ml.wrapper import JavaTransformer
from pyspark.sql.utils import is_remote

from torchspark.errors import (
    ConfigError,
    DeviceError,
    TorchSparkError,
    from_connect,
    install_py4j_handler,
)
from torchspark.session import check_jar_line, jar_path

# PySpark derives a stage's Java class from its Python module (pyspark.ml.X <-> org.apache.spark.ml.X),
# for py4j loads and for Spark Connect's transform, read and write alike: the classes below live
# in `dev.torchspark` (python/dev/torchspark.py answers for them) to name dev.torchspark.X.
_JAVA_PACKAGE = "dev.torchspark"


def _device(value) -> str:
    """`cpu`, `cuda` or `cuda:N`, checked when set (the Scala param's rule), else DeviceError."""
    v = TypeConverters.toString(value)
    if v in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
        return v
    raise DeviceError(f"device `{v}`: expected `cpu`, `cuda` or `cuda:N`")


def _precision(value) -> str:
    """`fp32` or `bf16`, checked when set (the Scala param's rule), else ConfigError."""
    v = TypeConverters.toString(value)
    if v in ("fp32", "bf16"):
        return v
    raise ConfigError(f"invalid option `precision`: expected `fp32` or `bf16`, not `{v}`")


class _CommonParams(Params):
    """The params every torchspark transformer has (the Scala trait of the same params)."""

    modelPath = Param(
        Params._dummy(), "modelPath", "path of the model (.pt or .pt2)", TypeConverters.toString
    )
    batchSize = Param(
        Params._dummy(), "batchSize", "rows per forward pass; 0 = auto", TypeConverters.toInt
    )
    device = Param(Params._dummy(), "device", "cpu or cuda:N", _device)
    numThreads = Param(
        Params._dummy(), "numThreads", "intra-op threads; 0 = spark.task.cpus", TypeConverters.toInt
    )
    precision = Param(Params._dummy(), "precision", "fp32 or bf16", _precision)
    handleInvalid = Param(
        Params._dummy(), "handleInvalid", "error, skip or keep", TypeConverters.toString
    )
    errorCol = Param(
        Params._dummy(), "errorCol", "reason a row failed (keep)", TypeConverters.toString
    )
    maxPixels = Param(
        Params._dummy(),
        "maxPixels",
        "largest width x height decoded; 0 = the spec's preprocess.max_pixels",
        TypeConverters.toInt,
    )
    maxRowElements = Param(
        Params._dummy(),
        "maxRowElements",
        "most values one row of one input may hold; 0 = the spec's max_row_elements",
        TypeConverters.toInt,
    )
    maxBatchBytes = Param(
        Params._dummy(),
        "maxBatchBytes",
        "most bytes of one forward pass's inputs; 0 = the engine's queue bound (256 MiB)",
        TypeConverters.toInt,
    )
    maxTextBytes = Param(
        Params._dummy(),
        "maxTextBytes",
        "most UTF-8 bytes of one text row; 0 = the spec's max_text_bytes",
        TypeConverters.toInt,
    )
    engine = Param(
        Params._dummy(),
        "engine",
        "shared (one inference engine per executor) or per-task",
        TypeConverters.toString,
    )
    engineTimeoutMs = Param(
        Params._dummy(),
        "engineTimeoutMs",
        "longest wait for the shared engine, in milliseconds",
        TypeConverters.toInt,
    )

    embedModel = Param(
        Params._dummy(),
        "embedModel",
        "save() copies the model, its spec and tokenizers into the saved stage (checksummed) and "
        "load() reads that copy; false saves modelPath only, by reference",
        TypeConverters.toBoolean,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            batchSize=0,
            device="cpu",
            numThreads=0,
            precision="fp32",
            handleInvalid="error",
            errorCol="error",
            maxPixels=0,
            maxRowElements=0,
            maxBatchBytes=0,
            maxTextBytes=0,
            engine="shared",
            engineTimeoutMs=600000,
            embedModel=True,
        )

    def setModelPath(self, value: str):
        return self._set(modelPath=value)

    def getModelPath(self) -> str:
        return self.getOrDefault(self.modelPath)

    def setBatchSize(self, value: int):
        return self._set(batchSize=value)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def setDevice(self, value: str):
        return self._set(device=value)

    def getDevice(self) -> str:
        return self.getOrDefault(self.device)

    def setNumThreads(self, value: int):
        return self._set(numThreads=value)

    def getNumThreads(self) -> int:
        return self.getOrDefault(self.numThreads)

    def setPrecision(self, value: str):
        return self._set(precision=value)

    def getPrecision(self) -> str:
        return self.getOrDefault(self.precision)

    def setHandleInvalid(self, value: str):
        return self._set(handleInvalid=value)

    def getHandleInvalid(self) -> str:
        return self.getOrDefault(self.handleInvalid)

    def setErrorCol(self, value: str):
        return self._set(errorCol=value)

    def getErrorCol(self) -> str:
        return self.getOrDefault(self.errorCol)

    def setMaxPixels(self, value: int):
        return self._set(maxPixels=value)

    def getMaxPixels(self) -> int:
        return self.getOrDefault(self.maxPixels)

    def setMaxRowElements(self, value: int):
        return self._set(maxRowElements=value)

    def getMaxRowElements(self) -> int:
        return self.getOrDefault(self.maxRowElements)

    def setMaxBatchBytes(self, value: int):
        return self._set(maxBatchBytes=value)

    def getMaxBatchBytes(self) -> int:
        return self.getOrDefault(self.maxBatchBytes)

    def setMaxTextBytes(self, value: int):
        return self._set(maxTextBytes=value)

    def getMaxTextBytes(self) -> int:
        return self.getOrDefault(self.maxTextBytes)

    def setEngine(self, value: str):
        return self._set(engine=value)

    def getEngine(self) -> str:
        return self.getOrDefault(self.engine)

    def setEngineTimeoutMs(self, value: int):
        return self._set(engineTimeoutMs=value)

    def getEngineTimeoutMs(self) -> int:
        return self.getOrDefault(self.engineTimeoutMs)

    def setEmbedModel(self, value: bool):
        return self._set(embedModel=value)

    def getEmbedModel(self) -> bool:
        return self.getOrDefault(self.embedModel)


class _TorchSparkParams(_CommonParams):
    """The image transformers' params: the common ones and the image column."""

    inputCol = Param(Params._dummy(), "inputCol", "image column", TypeConverters.toString)

    def setInputCol(self, value: str):
        return self._set(inputCol=value)

    def getInputCol(self) -> str:
        return self.getOrDefault(self.inputCol)


def _checked_jvm_class(name: str) -> str:
    if not is_remote():
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is not None:
            check_jar_line(sc._jvm)
            # torchspark's JVM exceptions (driver checks, failed tasks) as its Python classes.
            install_py4j_handler()
    return name


class _JavaBacked(JavaTransformer, JavaMLReadable, JavaMLWritable):
    @classmethod
    def read(cls):
        _checked_jvm_class(cls.__name__)
        return super().read()

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**kwargs)

    def write(self):
        """The JVM writer; a stage whose modelPath is an MLflow URI is saved with that version's
        files, which the JVM resolves itself (docs/saved-pipelines.md): it is told this
        process's tracking server when the session names none."""
        path = self.getOrDefault(self.modelPath) if self.isDefined(self.modelPath) else None
        if isinstance(path, str) and path.startswith(("models:/", "runs:/")) and not is_remote():
            from torchspark import mlflow as ts_mlflow

            ts_mlflow.share_tracking_uri()
        return super().write()

    def _transform(self, dataset):
        path = self.getOrDefault(self.modelPath) if self.isDefined(self.modelPath) else None
        if isinstance(path, str) and path.startswith(("models:/", "runs:/")):
            # Resolved once per transform on the driver: the JVM sees the resolved version's
            # file, so a moved alias cannot change what this transform's tasks score.
            from torchspark import mlflow as ts_mlflow

            self.resolved = ts_mlflow.resolve(path)
            self._set(modelPath=self.resolved.model_path)
            try:
                out = super()._transform(dataset)
            finally:
                self._set(modelPath=path)
        else:
            out = super()._transform(dataset)
        if is_remote():
            _check_connect_server(out, type(self).__name__)
        return out

    def metrics(self) -> dict[str, int]:
        """Counters of the last transform (after an action): rowsIn, rowsOut, rowsScored
        (imagesScored: its old name, kept for one release), rowsWithErrors, rowsSkipped,
        modelLoads, and milliseconds summed over tasks by stage: readTimeMs,
        bridgeTimeMs, nativeTimeMs = preprocessTimeMs + forwardTimeMs + native IPC; and the
        decodeTimeMs and resizeTimeMs parts of preprocessTimeMs (summed over rows: with
        numThreads > 1 they are thread time and can exceed preprocessTimeMs).

        Not over Spark Connect: the server builds a fresh transformer for every plan and lets
        clients call no methods on it (the counters stay in its Spark UI, as accumulators
        named `torchspark.<uid>.<counter>`)."""
        if is_remote():
            raise TorchSparkError(
                f"{type(self).__name__}.metrics() is unavailable over Spark Connect: the server "
                "creates a new transformer for each plan and allows no calls on it; the counters "
                f"are accumulators named torchspark.{self.uid}.* in the server's Spark UI"
            )
        m = self._java_obj.metrics()
        if m is None:
            return {}
        values = m.javaValues()
        return {str(k): int(values[k]) for k in values.keySet()}


def _check_connect_server(df, name: str) -> None:
    """Analyzes a Connect transform now, so that a server without the jar says so at once."""
    from pyspark.errors import PySparkException

    try:
        _ = df.schema
    except PySparkException as e:
        # The server's driver-side checks (model, spec, device) as torchspark's classes.
        converted = from_connect(e)
        if converted is not None:
            raise converted from None
        if e.getCondition() != "CONNECT_ML.UNSUPPORTED_EXCEPTION":
            raise
        raise TorchSparkError(
            f"the Spark Connect server does not know {_JAVA_PACKAGE}.{name}: start it with "
            f"--jars {jar_path()} (or spark.jars), e.g. spark-submit --class "
            "org.apache.spark.sql.connect.service.SparkConnectServer --jars <jar> spark-internal"
        ) from e


class ImageScorer(_JavaBacked, _TorchSparkParams):
    """Scores images natively in the executors: the `score` preset of a classifier (a
    version-1 image spec) over TorchModel's path, its columns as `describe(spec, "score")`
    gives them.

    Adds `predictionCol` (double, the class index), `probabilityCol` (an ML Vector),
    `predictedLabelCol` (string, the spec's label of the prediction; default
    `predicted_label`), `topKCol` (array<struct<index int, label string, probability
    double>>, the `topK` best classes; default `top_k`) and, with handleInvalid=keep,
    `errorCol`. While `predictedLabelCol` and `topKCol` are left at their defaults, the columns
    of their old defaults, `predictedLabel` and `topK`, are added too (copies, for one release:
    CHANGELOG.md)."""

    __module__ = _JAVA_PACKAGE

    predictionCol = Param(
        Params._dummy(), "predictionCol", "class index (double)", TypeConverters.toString
    )
    probabilityCol = Param(
        Params._dummy(), "probabilityCol", "probabilities (Vector)", TypeConverters.toString
    )
    predictedLabelCol = Param(
        Params._dummy(), "predictedLabelCol", "class name", TypeConverters.toString
    )
    topK = Param(Params._dummy(), "topK", "best classes in topKCol", TypeConverters.toInt)
    topKCol = Param(Params._dummy(), "topKCol", "the topK best classes", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        inputCol=None,
        batchSize=0,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        maxPixels=0,
        maxRowElements=0,
        maxBatchBytes=0,
        maxTextBytes=0,
        engine="shared",
        engineTimeoutMs=600000,
        embedModel=True,
        predictionCol="prediction",
        probabilityCol="probability",
        predictedLabelCol="predicted_label",
        topK=5,
        topKCol="top_k",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(
            _checked_jvm_class("dev.torchspark.ImageScorer"), self.uid
        )
        self._setDefault(
            predictionCol="prediction",
            probabilityCol="probability",
            predictedLabelCol="predicted_label",
            topK=5,
            topKCol="top_k",
        )
        self._set(**self._input_kwargs)

    def setPredictionCol(self, value: str):
        return self._set(predictionCol=value)

    def getPredictionCol(self) -> str:
        return self.getOrDefault(self.predictionCol)

    def setProbabilityCol(self, value: str):
        return self._set(probabilityCol=value)

    def getProbabilityCol(self) -> str:
        return self.getOrDefault(self.probabilityCol)

    def setPredictedLabelCol(self, value: str):
        return self._set(predictedLabelCol=value)

    def getPredictedLabelCol(self) -> str:
        return self.getOrDefault(self.predictedLabelCol)

    def setTopK(self, value: int):
        return self._set(topK=value)

    def getTopK(self) -> int:
        return self.getOrDefault(self.topK)

    def setTopKCol(self, value: str):
        return self._set(topKCol=value)

    def getTopKCol(self) -> str:
        return self.getOrDefault(self.topKCol)


class ImageFeaturizer(_JavaBacked, _TorchSparkParams):
    """Embeds images natively into `outputCol` (an ML Vector) for Spark ML estimators: the
    `featurize` preset (the spec's `featurize` output, `features`) over TorchModel's path."""

    __module__ = _JAVA_PACKAGE

    outputCol = Param(Params._dummy(), "outputCol", "the embedding", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        inputCol=None,
        batchSize=0,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        maxPixels=0,
        maxRowElements=0,
        maxBatchBytes=0,
        maxTextBytes=0,
        engine="shared",
        engineTimeoutMs=600000,
        embedModel=True,
        outputCol="features",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(
            _checked_jvm_class("dev.torchspark.ImageFeaturizer"), self.uid
        )
        self._setDefault(outputCol="features")
        self._set(**self._input_kwargs)

    def setOutputCol(self, value: str):
        return self._set(outputCol=value)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)


class TorchModel(_JavaBacked, _CommonParams):
    """Runs any TorchScript / `.pt2` model natively in the executors, as its spec declares
    (spec version 2, docs/models-python.md): the inputs' columns in, one column per declared
    output appended (scalars, arrays, ML Vectors, arrays of structs, PNG masks).

    `inputCols`: `["input=column"]` or `["input=c1,c2"]` (scalar columns gathered into one
    input) for inputs whose columns differ from the spec's; `outputCols`: `["output=column"]`
    renames an output column. Row errors follow `handleInvalid` as in ImageScorer."""

    __module__ = _JAVA_PACKAGE

    inputCols = Param(
        Params._dummy(),
        "inputCols",
        "input=column or input=c1,c2 for inputs read from other columns than the spec's",
        TypeConverters.toListString,
    )
    outputCols = Param(
        Params._dummy(),
        "outputCols",
        "output=column to rename an output column",
        TypeConverters.toListString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        batchSize=0,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        maxPixels=0,
        maxRowElements=0,
        maxBatchBytes=0,
        maxTextBytes=0,
        engine="shared",
        engineTimeoutMs=600000,
        embedModel=True,
        inputCols=None,
        outputCols=None,
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(
            _checked_jvm_class("dev.torchspark.TorchModel"), self.uid
        )
        self._setDefault(inputCols=[], outputCols=[])
        self._set(**self._input_kwargs)

    def setInputCols(self, value: list[str]):
        return self._set(inputCols=value)

    def getInputCols(self) -> list[str]:
        return self.getOrDefault(self.inputCols)

    def setOutputCols(self, value: list[str]):
        return self._set(outputCols=value)

    def getOutputCols(self) -> list[str]:
        return self.getOrDefault(self.outputCols)


class TextEmbedder(_JavaBacked, _CommonParams):
    """Embeds a string column natively in the executors: the spec's tokenizer (a Hugging Face
    `tokenizer.json` beside the model), the model, then the spec's pooling and normalisation
    (docs/text.md), into `outputCol`, an ML Vector (e.g. 384 doubles for all-MiniLM-L6-v2).

    `inputCol` (default `text`): a string or binary (UTF-8) column. A null or non-UTF-8 row is a
    row error handled by `handleInvalid` (`error` fails the task naming the row and column,
    `skip` drops it, `keep` keeps it with a null vector and the reason in `errorCol`); empty
    strings embed as the reference does (`[CLS] [SEP]`); text over the spec's `max_length`
    tokens is truncated, as sentence-transformers does."""

    __module__ = _JAVA_PACKAGE

    inputCol = Param(Params._dummy(), "inputCol", "text column", TypeConverters.toString)
    outputCol = Param(Params._dummy(), "outputCol", "the embedding", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        batchSize=0,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        maxPixels=0,
        maxRowElements=0,
        maxBatchBytes=0,
        maxTextBytes=0,
        engine="shared",
        engineTimeoutMs=600000,
        embedModel=True,
        inputCol="text",
        outputCol="embedding",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(
            _checked_jvm_class("dev.torchspark.TextEmbedder"), self.uid
        )
        self._setDefault(inputCol="text", outputCol="embedding")
        self._set(**self._input_kwargs)

    def setInputCol(self, value: str):
        return self._set(inputCol=value)

    def getInputCol(self) -> str:
        return self.getOrDefault(self.inputCol)

    def setOutputCol(self, value: str):
        return self._set(outputCol=value)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)


class TextClassifier(_JavaBacked, _CommonParams):
    """Classifies a string column natively in the executors (docs/text.md, TextClassifier): the
    spec's tokenizer, a sequence classifier exported by
    `export_text_model(..., task="text-classification")`, then softmax or sigmoid (the model's
    `problem_type`). Adds `predictionCol` (double class index), `probabilityCol` (ML Vector),
    `predictedLabelCol` (the model's `id2label`) and, when `topK` > 0, `topKCol`
    (array<struct<index, label, probability>>, best first).

    `inputCol` (default `text`): a string or binary (UTF-8) column. A null or non-UTF-8 row is a
    row error handled by `handleInvalid`; text over the spec's `max_length` tokens is truncated
    (as the Hugging Face pipeline with `truncation=True`) and counted."""

    __module__ = _JAVA_PACKAGE

    inputCol = Param(Params._dummy(), "inputCol", "text column", TypeConverters.toString)
    predictionCol = Param(
        Params._dummy(), "predictionCol", "predicted class index", TypeConverters.toString
    )
    probabilityCol = Param(
        Params._dummy(), "probabilityCol", "class probabilities", TypeConverters.toString
    )
    predictedLabelCol = Param(
        Params._dummy(), "predictedLabelCol", "predicted class name", TypeConverters.toString
    )
    topK = Param(Params._dummy(), "topK", "best classes in topKCol (0: none)", TypeConverters.toInt)
    topKCol = Param(Params._dummy(), "topKCol", "the topK best classes", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        batchSize=0,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        maxPixels=0,
        maxRowElements=0,
        maxBatchBytes=0,
        maxTextBytes=0,
        engine="shared",
        engineTimeoutMs=600000,
        embedModel=True,
        inputCol="text",
        predictionCol="prediction",
        probabilityCol="probability",
        predictedLabelCol="predicted_label",
        topK=5,
        topKCol="top_k",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(
            _checked_jvm_class("dev.torchspark.TextClassifier"), self.uid
        )
        self._setDefault(
            inputCol="text",
            predictionCol="prediction",
            probabilityCol="probability",
            predictedLabelCol="predicted_label",
            topK=5,
            topKCol="top_k",
        )
        self._set(**self._input_kwargs)

    def setInputCol(self, value: str):
        return self._set(inputCol=value)

    def getInputCol(self) -> str:
        return self.getOrDefault(self.inputCol)

    def setTopK(self, value: int):
        return self._set(topK=value)

    def getTopK(self) -> int:
        return self.getOrDefault(self.topK)

    def setPredictionCol(self, value: str):
        return self._set(predictionCol=value)

    def getPredictionCol(self) -> str:
        return self.getOrDefault(self.predictionCol)

    def setProbabilityCol(self, value: str):
        return self._set(probabilityCol=value)

    def getProbabilityCol(self) -> str:
        return self.getOrDefault(self.probabilityCol)

    def setPredictedLabelCol(self, value: str):
        return self._set(predictedLabelCol=value)

    def getPredictedLabelCol(self) -> str:
        return self.getOrDefault(self.predictedLabelCol)

    def setTopKCol(self, value: str):
        return self._set(topKCol=value)

    def getTopKCol(self) -> str:
        return self.getOrDefault(self.topKCol)
