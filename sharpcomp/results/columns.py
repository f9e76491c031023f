"""The schema of a run's results: the names of the columns of ``metrics.parquet``.

One place for every column name that more than one module needs: records writes these columns,
metrics and flatness compute the quantities named here, reparam tabulates them and figures reads
and draws them. A row of ``metrics.parquet`` is one checkpoint and one sample set.
"""

from __future__ import annotations

# Identity of a run: constant over its rows. ``settings`` is the JSON of every setting that defines
# the run (any swept config key); ``status`` is rewritten with each append.
IDENTITY_COLUMNS = (
    "run_id", "data", "model", "lr", "batch", "seed", "loss", "width", "outputs", "optim", "scale",
    "data_source", "device", "versions", "settings", "status",
)
# Per-checkpoint bookkeeping and whole-set evaluations.
CHECKPOINT_COLUMNS = (
    "iteration", "epoch", "wall_time", "train_loss", "train_acc", "test_loss", "test_acc",
    "train_loss_running",
)
# Which points the metric columns were computed on, how many, and the loss over those points.
SAMPLE_COLUMNS = ("sample_set", "n_samples", "sample_loss")
# The study's metric columns, in the paper's order.
METRIC_COLUMNS = (
    "sharpness", "G", "log_volume", "mls", "local_dim", "bound_b", "bound_c", "bound_d",
)
# Why bound columns are missing (e.g. a convolutional first layer); empty when they are present.
REASON_COLUMNS = ("bounds_reason",)
# Network-wide compression (NMLS, NVR) and its bounds (sharpcomp.measures.study.network_wide); on every row
# (and the proven analogues of bound_b, bound_c for a convolutional first layer, NaN otherwise)
# with the metric columns. Results written before they existed read them as missing values.
NETWORK_WIDE_COLUMNS = (
    "nmls", "nvr", "nmls_bound", "nmls_bound_b", "nmls_bound_w", "nmls_bound_authors",
    "bound_b_conv", "bound_c_conv", "sharpness_inv", "nmls_bound_inv",
)
# Which network-wide bounds are proven for the network (weight sharing), or why they are missing.
NETWORK_WIDE_REASON = "network_wide_reason"
# Standard errors of the matrix-free estimators (sharpcomp.measures.study.estimators; `sharpcomp measure`
# on large networks): extra columns, only in rows computed by them.
ESTIMATE_COLUMNS = ("sharpness_se", "G_se", "local_dim_se", "mls_err", "probes")
# Every column a results file has, in order (optional flatness columns come after them).
COLUMNS = (IDENTITY_COLUMNS + CHECKPOINT_COLUMNS + SAMPLE_COLUMNS + METRIC_COLUMNS + REASON_COLUMNS
           + NETWORK_WIDE_COLUMNS + (NETWORK_WIDE_REASON,))

# Optional flatness measures (``metrics.flatness``), on the ``train`` rows at their own
# cadence (``metrics.flatness_every``). The measures themselves, in the order figures draw them:
FLATNESS_MEASURES = (
    "hessian_trace", "quotient_trace", "sharpness_worst", "sharpness_adaptive", "sharpness_worst_quotient",
    "grad_disagreement", "fisher_trace", "hessian_max", "ggn_max", "batch_sharpness", "nonuniformity",
    "average", "average_adaptive", "keskar", "pacbayes_flatness", "pacbayes_mag_flatness", "contrastive",
    "regret_kl",
)
# The standard error of a stochastic estimate (measure -> its column).
FLATNESS_SE = {"hessian_trace": "hessian_trace_se", "quotient_trace": "quotient_trace_se",
               "batch_sharpness": "batch_sharpness_se"}
FLATNESS_SE.update({"average": "average_se", "average_adaptive": "average_adaptive_se"})  # Monte-Carlo
# The worst-case sharpness measures; each has a ``<name>_rel`` column, the value / (1 + L).
WORST_CASE_MEASURES = ("sharpness_worst", "sharpness_adaptive", "sharpness_worst_quotient")
# Tr H - Tr(PHP) in closed form.
TRACE_GAP = "quotient_trace_gap"
# The curvature spectrum (sharpcomp.measures.curvature._columns): Lanczos eigenvalues with their largest relative
# residual and iteration count, batch sharpness with its standard error, the non-uniformity, and two
# list columns (LIST_COLUMNS): the top-k Hessian eigenvalues and the SLQ density's bin masses.
CURVATURE_COLUMNS = (
    "hessian_max", "hessian_max_residual", "hessian_max_iterations", "hessian_top", "ggn_max",
    "ggn_max_residual", "ggn_max_iterations", "batch_sharpness", "batch_sharpness_se", "nonuniformity",
    "nonuniformity_iterations", "hessian_density",
)
LIST_COLUMNS = ("hessian_top", "hessian_density")
# Every flatness column a results file can have.
FLATNESS_COLUMNS = (
    "hessian_trace", "hessian_trace_se", "quotient_trace", "quotient_trace_se", TRACE_GAP,
    "sharpness_worst", "sharpness_worst_rel", "sharpness_adaptive", "sharpness_adaptive_rel",
    "sharpness_worst_quotient", "sharpness_worst_quotient_rel", "grad_disagreement", "fisher_trace",
    *CURVATURE_COLUMNS,
    "average", "average_se", "average_err", "average_adaptive", "average_adaptive_se", "average_adaptive_err",
    "keskar", "pacbayes_sigma", "pacbayes_mag_sigma", "pacbayes_flatness", "pacbayes_orig",
    "pacbayes_mag_flatness", "pacbayes_mag_orig", "contrastive", "contrastive_full", "regret_kl",
    "regret_kl_damping",
)
