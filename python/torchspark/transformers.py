"""PySpark wrappers of the Scala transformers `dev.torchspark.ImageScorer` / `ImageFeaturizer`.

Same class names, same param names and defaults, `setX`/`getX`, keyword constructors,
save/load and Pipeline support. The work runs in the JVM executors (JNI), not in Python.
"""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLReadable, JavaMLReader, JavaMLWritable
from pyspark.ml.wrapper import JavaTransformer


class _Reader(JavaMLReader):
    @classmethod
    def _java_loader_class(cls, clazz: type) -> str:
        return "dev.torchspark." + clazz.__name__


class _TorchSparkParams(Params):
    modelPath = Param(
        Params._dummy(), "modelPath", "path of the model (.pt or .pt2)", TypeConverters.toString
    )
    inputCol = Param(Params._dummy(), "inputCol", "image column", TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "rows per native call", TypeConverters.toInt)
    device = Param(Params._dummy(), "device", "cpu or cuda:N", TypeConverters.toString)
    numThreads = Param(
        Params._dummy(), "numThreads", "intra-op threads; 0 = spark.task.cpus", TypeConverters.toInt
    )
    precision = Param(Params._dummy(), "precision", "fp32 or bf16", TypeConverters.toString)
    handleInvalid = Param(
        Params._dummy(), "handleInvalid", "error, skip or keep", TypeConverters.toString
    )
    errorCol = Param(
        Params._dummy(), "errorCol", "reason a row failed (keep)", TypeConverters.toString
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            batchSize=64,
            device="cpu",
            numThreads=0,
            precision="fp32",
            handleInvalid="error",
            errorCol="error",
        )

    def setModelPath(self, value: str):
        return self._set(modelPath=value)

    def getModelPath(self) -> str:
        return self.getOrDefault(self.modelPath)

    def setInputCol(self, value: str):
        return self._set(inputCol=value)

    def getInputCol(self) -> str:
        return self.getOrDefault(self.inputCol)

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


class _JavaBacked(JavaTransformer, JavaMLReadable, JavaMLWritable):
    @classmethod
    def read(cls):
        return _Reader(cls)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**kwargs)

    def metrics(self) -> dict[str, int]:
        """Counters of the last transform (after an action): imagesScored, rowsWithErrors,
        rowsSkipped, modelLoads, and milliseconds summed over tasks by stage: readTimeMs,
        bridgeTimeMs, nativeTimeMs = preprocessTimeMs + forwardTimeMs + native IPC."""
        m = self._java_obj.metrics()
        if m is None:
            return {}
        values = m.javaValues()
        return {str(k): int(values[k]) for k in values.keySet()}


class ImageScorer(_JavaBacked, _TorchSparkParams):
    """Scores images natively in the executors: prediction, probability, label, top-k."""

    predictionCol = Param(Params._dummy(), "predictionCol", "class index", TypeConverters.toString)
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
        batchSize=64,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        predictionCol="prediction",
        probabilityCol="probability",
        predictedLabelCol="predictedLabel",
        topK=5,
        topKCol="topK",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj("dev.torchspark.ImageScorer", self.uid)
        self._setDefault(
            predictionCol="prediction",
            probabilityCol="probability",
            predictedLabelCol="predictedLabel",
            topK=5,
            topKCol="topK",
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
    """Embeds images natively into `outputCol` (an ML Vector) for Spark ML estimators."""

    outputCol = Param(Params._dummy(), "outputCol", "the embedding", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        modelPath=None,
        inputCol=None,
        batchSize=64,
        device="cpu",
        numThreads=0,
        precision="fp32",
        handleInvalid="error",
        errorCol="error",
        outputCol="features",
    ) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj("dev.torchspark.ImageFeaturizer", self.uid)
        self._setDefault(outputCol="features")
        self._set(**self._input_kwargs)

    def setOutputCol(self, value: str):
        return self._set(outputCol=value)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)
