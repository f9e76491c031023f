"""The vision transformer (``model=vit``, timm's VisionTransformer): every metric, old and new, equals
the float64 brute-force reference on a tiny ViT (LayerNorm, GELU, attention fused or not, class token
and position embeddings in S), and a short run logs every column with the proven bound chain."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from sharpcomp.data.datasets import Dataset
from sharpcomp.engine.train import train
from sharpcomp.measures.study.metrics import compute_metrics
from sharpcomp.measures.study.network_wide import add_network_wide
from sharpcomp.models import ModelError, build_from_config, vit
from sharpcomp.results.columns import METRIC_COLUMNS, NETWORK_WIDE_COLUMNS
from sharpcomp.results.records import read_metrics
from tests.conftest import compose_train
from tests.problems import VIT_TINY
from tests.reference import reference_metrics, reference_network_wide

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_vit_metrics_match_brute_force():
    model, _, x, _ = VIT_TINY.make()
    res = add_network_wide(compute_metrics(model, x, dtype=torch.float64), model, x, dtype=torch.float64)
    ref = reference_metrics(model, x)
    for key in ("sharpness", "G", "log_volume", "mls", "local_dim"):
        assert res[key] == pytest.approx(ref[key], rel=1e-8), key
    ref_nw = reference_network_wide(model, x)
    for key in ("nmls", "nvr", "nmls_bound_b", "nmls_bound_w", "nmls_bound", "nmls_bound_authors", "sharpness_inv"):
        assert res[key] == pytest.approx(ref_nw[key], rel=1e-7), key
    assert res["nmls"] <= res["nmls_bound_b"] * (1 + 1e-9)
    assert "weight sharing" in res["network_wide_reason"]


def test_fused_and_plain_attention_agree():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    fused, plain = (compute_metrics(VIT_TINY.variant(fused=f).model(), x, dtype=torch.float64) for f in (True, False))
    for key in ("sharpness", "G", "mls", "local_dim"):
        assert fused[key] == pytest.approx(plain[key], rel=1e-10), key


def test_class_token_and_position_embeddings_count_in_s():
    model, x = VIT_TINY.model(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    full = compute_metrics(model, x, dtype=torch.float64)["sharpness"]
    model.cls_token.requires_grad_(False)
    model.pos_embed.requires_grad_(False)
    without = compute_metrics(model, x, dtype=torch.float64)["sharpness"]
    assert without == pytest.approx(reference_metrics(model, x)["sharpness"], rel=1e-8)
    double = model.double().requires_grad_(True)
    part = 0.0  # mean_i sum_k ||d f_k / d (cls_token, pos_embed)||^2, by loops
    for i in range(len(x)):
        f = double(x[i:i + 1].double())[0]
        for k in range(len(f)):
            grads = torch.autograd.grad(f[k], [double.cls_token, double.pos_embed], retain_graph=True)
            part += sum(float(g.square().sum()) for g in grads) / len(x)
    assert part > 0 and full - without == pytest.approx(part, rel=1e-6)


def test_vit_config_and_bad_shape():
    cfg = OmegaConf.to_container(compose_train(["model=vit"]).model, resolve=True)
    model = build_from_config(cfg, 10, (3, 32, 32), seed=0)
    assert sum(p.numel() for p in model.parameters()) == 75_082
    with pytest.raises(ModelError, match="multiple of patch"):
        vit(10, input_shape=(3, 30, 30))


def test_vit_trains_and_logs_every_column(tmp_path):
    gen = torch.Generator().manual_seed(4)
    train_y, test_y = torch.arange(64) % 2, torch.arange(16) % 2
    train_x = torch.randn(64, 3, 8, 8, generator=gen) + train_y.view(-1, 1, 1, 1).float()
    test_x = torch.randn(16, 3, 8, 8, generator=gen) + test_y.view(-1, 1, 1, 1).float()
    data = Dataset("cifar10_2class", train_x, train_y, test_x, test_y, 2, "synthetic")
    cfg = compose_train(["data=cifar10_2class", "model=vit", "model.dim=8", "model.depth=1", "model.heads=2",
                         "steps=4", "log_every=2", "metrics.n=4", "progress=false", "batch=8", "lr=0.05"])
    res = train(cfg, tmp_path / "run", data=data)
    assert res.status == "finished"
    df = read_metrics(tmp_path / "run")
    assert len(df) == 3 and (df.model == "vit").all()
    for col in METRIC_COLUMNS[:5] + NETWORK_WIDE_COLUMNS:
        assert df[col].map(lambda v: not math.isnan(v)).all(), col
    assert (df.nmls <= df.nmls_bound_b * (1 + 1e-5)).all()
    assert (df.mls <= df.bound_b_conv * (1 + 1e-5)).all()
