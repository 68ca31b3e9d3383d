"""Evaluation: recall protocols, modality-invariance metrics, and plots.

Importing this package is light (torch and numpy only): scikit-learn and matplotlib are imported
inside the functions that need them.
"""

from itmatch.evaluation.invariance import centroid_distance, invariance_metrics, mmd, probe_accuracy
from itmatch.evaluation.plots import plot_training_curves, tsne_coordinates, tsne_grid, tsne_map
from itmatch.evaluation.recall import (
    CAPTIONS_PER_IMAGE,
    METRIC_KEYS,
    PROTOCOLS,
    RECALL_KEYS,
    evaluate_embeddings,
    evaluate_similarity,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_similarity,
    resolve_protocol,
    similarity_matrix,
)

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "METRIC_KEYS",
    "PROTOCOLS",
    "RECALL_KEYS",
    "centroid_distance",
    "evaluate_embeddings",
    "evaluate_similarity",
    "invariance_metrics",
    "metrics_from_ranks",
    "mmd",
    "plot_training_curves",
    "probe_accuracy",
    "ranks_from_embeddings",
    "ranks_from_similarity",
    "resolve_protocol",
    "similarity_matrix",
    "tsne_coordinates",
    "tsne_grid",
    "tsne_map",
]
