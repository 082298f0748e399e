"""Classification metrics and label bookkeeping for fine-tuning: accuracy, macro-F1, Matthews correlation, medians."""

from __future__ import annotations

import math
import re
import statistics
from typing import Iterable, Sequence

METRICS = ("accuracy", "macro_f1", "mcc")


def label_order(labels: Iterable[str]) -> list[str]:
    """The distinct labels in id order: numerically when every label is an integer ("0", "1", "2" → ids 0, 1, 2,
    so a file's own integer labels keep their values), otherwise alphabetically (stable across runs and files)."""
    distinct = set(labels)
    if all(_is_int(label) for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))  # "01" and "1": one order, every run
    return sorted(distinct)


def _is_int(text: str) -> bool:
    """An integer written in ASCII digits ("-1", "007"); not "--1" or "²", which str.isdigit() also accepts."""
    return re.fullmatch(r"-?[0-9]+", text) is not None


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> list[list[int]]:
    """counts[g][p]: how many examples of gold label g were predicted as p; (num_labels, num_labels)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    counts = [[0] * num_labels for _ in range(num_labels)]
    for g, p in zip(gold, predicted):
        counts[g][p] += 1
    return counts


def accuracy(counts: Sequence[Sequence[int]]) -> float:
    total = sum(map(sum, counts))
    return sum(counts[k][k] for k in range(len(counts))) / total if total else 0.0


def macro_f1(counts: Sequence[Sequence[int]]) -> float:
    """Unweighted mean of the per-label F1 over the labels that occur in the gold labels or the predictions (a
    label neither present nor predicted says nothing about this model, as in scikit-learn's default)."""
    n = len(counts)
    f1s = []
    for k in range(n):
        true_pos = counts[k][k]
        gold_k = sum(counts[k])
        predicted_k = sum(counts[g][k] for g in range(n))
        if gold_k == 0 and predicted_k == 0:
            continue
        f1s.append(2 * true_pos / (gold_k + predicted_k))
    return sum(f1s) / len(f1s) if f1s else 0.0


def mcc(counts: Sequence[Sequence[int]]) -> float:
    """Matthews correlation coefficient, Gorodkin's multiclass form (for two labels it is the binary MCC):
    (c·s − Σ p_k·t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)), with c correct, s total, t_k gold and p_k
    predicted counts of label k. 0 when a factor of the denominator is 0 (every prediction or every gold label the
    same)."""
    n = len(counts)
    s = sum(map(sum, counts))
    c = sum(counts[k][k] for k in range(n))
    t = [sum(counts[k]) for k in range(n)]
    p = [sum(counts[g][k] for g in range(n)) for k in range(n)]
    covariance = c * s - sum(pk * tk for pk, tk in zip(p, t))
    denominator = math.sqrt((s * s - sum(pk * pk for pk in p)) * (s * s - sum(tk * tk for tk in t)))  # exact ints
    return covariance / denominator if denominator > 0 else 0.0


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> dict[str, float]:
    """accuracy, macro_f1 and mcc of predictions against gold label ids."""
    counts = confusion_matrix(gold, predicted, num_labels)
    return {"accuracy": accuracy(counts), "macro_f1": macro_f1(counts), "mcc": mcc(counts)}


def median_metrics(per_seed: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each key over the seeds' results (each key on its own, so they may come from different seeds)."""
    return {key: statistics.median(r[key] for r in per_seed) for key in keys}


def best_index(per_seed: Sequence[dict[str, float]], key: str) -> int:
    """Index of the result with the highest `key`; the first one on a tie."""
    return max(range(len(per_seed)), key=lambda i: (per_seed[i][key], -i))
