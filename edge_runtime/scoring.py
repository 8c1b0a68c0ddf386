"""The paper's anomaly scores (numpy only), used by evaluation and on the device alike.

- reconstruction score: valve and slider -> mean squared next-frame error; other types ->
  Mahalanobis distance of the per-bin squared error averaged over time (a 128-vector);
- classification score: cross-entropy of the clip's true machine id (mean over windows);
- final score: Mahalanobis distance of (reconstruction, classification) to the type's
  training statistics. Single-task runs use their one score directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BundleError
from .features import Normalization

MSE_TYPES = frozenset({"valve", "slider"})  # sound spread over the whole band (paper)
TASKS = ("multitask", "recon", "classify")


def uses_mse(machine_type: str) -> bool:
    return machine_type in MSE_TYPES


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    """``sqrt((x - mean)^T P (x - mean))`` for one vector; P is the inverse covariance."""
    d = np.asarray(x, np.float64) - mean
    return float(np.sqrt(max(d @ precision @ d, 0.0)))


def error_vector(residual: np.ndarray) -> np.ndarray:
    """Per-bin squared next-frame error averaged over time: ``(n_mels, T) -> (n_mels,)``."""
    r = residual.astype(np.float64)
    return (r * r).mean(axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def classification_score(logits: np.ndarray, class_index: int) -> float:
    """Cross-entropy of the true class, averaged over the clip's windows ``(N, K)``."""
    return float(-log_softmax(logits)[:, class_index].mean())


@dataclass
class TypeStats:
    """Scoring statistics of one machine type, fitted on training normals."""

    norm: Normalization
    recon_mean: np.ndarray | None = None  # (n_mels,) for Mahalanobis types
    recon_precision: np.ndarray | None = None  # (n_mels, n_mels)
    final_mean: np.ndarray | None = None  # (2,)
    final_precision: np.ndarray | None = None  # (2, 2)


@dataclass
class ScoringStats:
    """Everything the device needs besides the model: normalisation, statistics, thresholds."""

    task: str
    class_map: list[str]  # "type/id" per class index
    types: dict[str, TypeStats]
    thresholds: dict[str, float] = field(default_factory=dict)  # "type/id" -> decision threshold
    false_alarm_rate: float = 0.1

    def class_index(self, machine: str) -> int:
        try:
            return self.class_map.index(machine)
        except ValueError:
            raise BundleError(f"machine {machine!r} is not one the model was trained on ({', '.join(self.class_map)})") from None

    def type_stats(self, machine_type: str) -> TypeStats:
        if machine_type not in self.types:
            raise BundleError(f"machine type {machine_type!r} has no statistics (known: {', '.join(sorted(self.types))})")
        return self.types[machine_type]

    # -- scores ------------------------------------------------------------------------
    def recon_score(self, machine_type: str, residual: np.ndarray) -> float:
        if uses_mse(machine_type):
            return float(np.mean(residual.astype(np.float64) ** 2))
        st = self.type_stats(machine_type)
        return mahalanobis(error_vector(residual), st.recon_mean, st.recon_precision)

    def score_pair(self, machine: str, residual: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
        """(reconstruction score, classification score) of one clip."""
        machine_type = machine.split("/")[0]
        rec = self.recon_score(machine_type, residual) if self.task != "classify" else float("nan")
        cls = classification_score(logits, self.class_index(machine)) if self.task != "recon" else float("nan")
        return rec, cls

    def final_score(self, machine: str, rec: float, cls: float) -> float:
        if self.task == "recon":
            return rec
        if self.task == "classify":
            return cls
        st = self.type_stats(machine.split("/")[0])
        return mahalanobis(np.array([rec, cls]), st.final_mean, st.final_precision)

    def score(self, machine: str, residual: np.ndarray, logits: np.ndarray) -> float:
        return self.final_score(machine, *self.score_pair(machine, residual, logits))

    def threshold(self, machine: str) -> float:
        if machine not in self.thresholds:
            raise BundleError(f"no decision threshold for {machine!r}")
        return self.thresholds[machine]

    # -- storage (npz, no pickle) ---------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "task": np.array(self.task),
            "class_map": np.array(self.class_map),
            "false_alarm_rate": np.array(self.false_alarm_rate),
            "threshold_machines": np.array(sorted(self.thresholds)),
            "threshold_values": np.array([self.thresholds[m] for m in sorted(self.thresholds)], np.float64),
        }
        for t, st in self.types.items():
            arrays[f"type/{t}/norm_mean"] = st.norm.mean
            arrays[f"type/{t}/norm_std"] = st.norm.std
            for name in ("recon_mean", "recon_precision", "final_mean", "final_precision"):
                value = getattr(st, name)
                if value is not None:
                    arrays[f"type/{t}/{name}"] = value
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "ScoringStats":
        types: dict[str, TypeStats] = {}
        for key in arrays:
            if key.startswith("type/") and key.endswith("/norm_mean"):
                t = key[len("type/") : -len("/norm_mean")]
                get = lambda n: np.asarray(arrays[f"type/{t}/{n}"]) if f"type/{t}/{n}" in arrays else None  # noqa: E731
                types[t] = TypeStats(
                    Normalization(get("norm_mean").astype(np.float32), get("norm_std").astype(np.float32)),
                    get("recon_mean"), get("recon_precision"), get("final_mean"), get("final_precision"),
                )
        machines = [str(m) for m in np.asarray(arrays["threshold_machines"]).tolist()]
        values = np.asarray(arrays["threshold_values"]).tolist()
        return cls(
            task=str(arrays["task"]),
            class_map=[str(c) for c in np.asarray(arrays["class_map"]).tolist()],
            types=types,
            thresholds=dict(zip(machines, values)),
            false_alarm_rate=float(arrays["false_alarm_rate"]),
        )

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz`` (no pickled objects)."""
        import os

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **self.to_arrays())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "ScoringStats":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})
