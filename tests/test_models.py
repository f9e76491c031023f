import math

import pytest
import torch
from torch import nn

from sharpcomp.models import build_model, count_parameters


def test_parameter_counts_match_spec():
    assert count_parameters(build_model("vgg10", 10)) == 97_018
    assert count_parameters(build_model("mlp4", 10)) == 898_510


def test_outputs_and_width_options():
    # only the last layer depends on N: 128*N + N for vgg10, 500*N + N for mlp4
    assert count_parameters(build_model("vgg10", 2)) == 97_018 - 8 * 129
    assert count_parameters(build_model("mlp4", 2)) == 898_510 - 8 * 501
    half = build_model("mlp4", 10, width=0.5)
    assert [m.out_features for m in half if isinstance(m, nn.Linear)] == [250, 250, 250, 10]
    vhalf = build_model("vgg10", 10, width=0.5)
    assert [m.out_channels for m in vhalf if isinstance(m, nn.Conv2d)] == [8, 8, 16, 32, 32]
    assert vhalf(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_architecture_shapes_and_layer_names():
    vgg = build_model("vgg10")
    x = torch.rand(3, 3, 32, 32)
    h = x
    for name, layer in vgg.named_children():
        h = layer(h)
        if name == "pool5":
            assert h.shape == (3, 64, 2, 2)  # 32x32 input ends at 64 x 2 x 2 = 256 features
    assert h.shape == (3, 10)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in vgg.modules())
    mlp = build_model("mlp4")
    assert [n for n, _ in mlp.named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3", "relu3", "fc4"]
    assert mlp(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_vgg10_initialisation():
    vgg = build_model("vgg10", seed=0)
    for m in vgg.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.all(m.bias == 0)
            want = math.sqrt(2.0 / (9 * m.out_channels))
            assert m.weight.std().item() == pytest.approx(want, rel=0.1 if m.weight.numel() > 1000 else 0.25)
            assert abs(m.weight.mean().item()) < 4 * want / math.sqrt(m.weight.numel())
    # linear layers keep PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert vgg.fc1.weight.abs().max().item() <= 1 / math.sqrt(256)


def test_seed_fixes_initial_weights():
    a, b, c = build_model("mlp4", seed=3), build_model("mlp4", seed=3), build_model("mlp4", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="width"):
        build_model("mlp4", width=0)


def test_samples_per_chunk_follows_the_largest_activation():
    from sharpcomp.models import ACTIVATION_BUDGET, samples_per_chunk

    vgg, mlp = build_model("vgg10", 10, seed=0), build_model("mlp4", 10, seed=0)
    budget = ACTIVATION_BUDGET["cpu"]
    # vgg10: conv1's output, 16 x 34 x 34 per sample (padding 2); mlp4: the 784-pixel input
    assert samples_per_chunk(vgg, torch.rand(1, 3, 32, 32)) == budget // (16 * 34 * 34)
    assert samples_per_chunk(vgg, torch.rand(1, 3, 32, 32), members=15) == budget // (15 * 16 * 34 * 34)
    assert samples_per_chunk(mlp, torch.rand(1, 1, 28, 28)) == budget // 784
    assert samples_per_chunk(vgg, torch.rand(1, 3, 32, 32), members=10**9) == 1
    meta = samples_per_chunk(vgg.to("meta"), torch.rand(1, 3, 32, 32, device="meta"), 3, device=torch.device("cpu"))
    assert meta == budget // (3 * 16 * 34 * 34)


def test_vgg10_takes_any_image_size():
    square = build_model("vgg10", 3, width=0.25, input_shape=(1, 28, 28), seed=0)
    assert square.fc1.in_features == 16 * 2 * 2 and square(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    wide = build_model("vgg10", 3, width=0.25, input_shape=(1, 7, 40), seed=0)  # H 7 -> 2, W 40 -> 3
    assert wide.fc1.in_features == 16 * 2 * 3 and wide(torch.rand(2, 1, 7, 40)).shape == (2, 3)
