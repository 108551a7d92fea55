"""The quick start (README, docs/install-python.md): after `pip install torchspark torch
pyspark`, score a folder of PNGs with a TorchScript model on Spark.

    python examples/quickstart.py [MODEL.pt IMAGES_DIR]

MODEL.pt's spec (MODEL.json) sits beside it. Without arguments it scores the tiny model and
image the package ships. tests/python/test_dist.py runs this file in a venv holding only the wheel.
"""

import sys
from pathlib import Path

from pyspark.sql import SparkSession

import torchspark

data = Path(torchspark.__file__).parent / "data"  # the package's tiny model and image
model, images = sys.argv[1:3] if len(sys.argv) > 2 else (str(data / "tiny.pt"), str(data))

# Any builder: .master("yarn"), .master("spark://host:7077"), ...; configure adds the jar
# of the installed pyspark's Spark line (spark.jars) and returns the builder.
builder = SparkSession.builder.master("local[2]").appName("torchspark-quickstart")
spark = torchspark.configure(builder).getOrCreate()

df = torchspark.read_images(spark, images, pattern="*.png")  # binaryFile rows: path, content
scorer = torchspark.ImageScorer(modelPath=model, inputCol="content", topK=3)
scored = scorer.transform(df)  # + prediction, probability, predicted_label, top_k, error
for row in scored.orderBy("path").limit(10).collect():
    print(row.path.rsplit("/", 1)[-1], row.predicted_label, f"{max(row.probability):.4f}")
spark.stop()
