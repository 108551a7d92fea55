"""Accuracy and confusion matrix computed in Spark (one small aggregate, never every row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from torchspark.errors import missing_extra


@dataclass
class Evaluation:
    accuracy: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    classes: list
    figure: Any  # matplotlib Figure

    def __str__(self) -> str:
        width = max(4, *(len(str(c)) for c in self.classes))
        head = " " * (width + 2) + " ".join(f"{c!s:>{width}}" for c in self.classes)
        rows = [
            f"{c!s:>{width}}  " + " ".join(f"{v:>{width}d}" for v in row)
            for c, row in zip(self.classes, self.confusion)
        ]
        return f"accuracy {self.accuracy:.4f}\n" + "\n".join([head, *rows])


def evaluate(df, label_col: str = "label", prediction_col: str = "prediction", labels=None):
    """Accuracy, confusion matrix (aggregated by Spark) and a matplotlib figure of it.

    ImportError naming the `plot` extra when matplotlib is not installed."""
    counts = df.groupBy(label_col, prediction_col).count().collect()
    classes = sorted(
        {r[0] for r in counts if r[0] is not None} | {r[1] for r in counts if r[1] is not None}
    )
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p, n in counts:
        if t is not None and p is not None:
            m[index[t], index[p]] += n
    total = int(m.sum())
    accuracy = float(np.trace(m)) / total if total else float("nan")
    names = (
        labels if labels is not None else [int(c) if float(c).is_integer() else c for c in classes]
    )
    return Evaluation(accuracy, m, list(names), _figure(m, list(names), accuracy))


def _figure(m: np.ndarray, names: list, accuracy: float):
    try:
        import matplotlib

        matplotlib.use(matplotlib.get_backend() if "inline" in matplotlib.get_backend() else "Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise missing_extra("matplotlib", "plot", "evaluate's confusion-matrix figure") from e

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=45)
    ax.set_yticks(range(len(names)), [str(n) for n in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {accuracy:.2%})")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
                fontsize=8,
            )
    fig.tight_layout()
    return fig
