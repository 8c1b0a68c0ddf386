import pytest
import torch

from mtad.train.model import ModelConfig, MultitaskModel, ResNet18, count_parameters

TINY = ModelConfig(n_classes=5, residual_channels=8, skip_channels=16, dilations=(1, 2, 4, 1, 2), resnet_width=8, window=40)


def test_resnet18_matches_torchvision_parameter_count():
    # torchvision.models.resnet18(): 11,689,512 parameters (3 input channels, 1000 classes)
    assert count_parameters(ResNet18(3, 1000)) == 11_689_512
    # ours takes the 1-channel feature map: conv1 has 64*7*7*2 fewer weights
    assert count_parameters(ResNet18(1, 1000)) == 11_689_512 - 64 * 7 * 7 * 2


def test_shapes_and_receptive_field():
    model = MultitaskModel(TINY).eval()
    x = torch.randn(3, 128, 40)
    pred, logits, embedding = model(x)
    assert pred.shape == (3, 128, 40) and logits.shape == (3, 5) and embedding.shape == (3, 8 * 8)
    assert TINY.receptive_field == 1 + sum(TINY.dilations) == 11
    assert model.reconstruct(x).shape == (3, 128, 40)


def test_prediction_is_causal():
    torch.manual_seed(0)
    model = MultitaskModel(TINY).eval()
    x = torch.randn(1, 128, 40)
    t = 20
    y = x.clone()
    y[:, :, t + 1 :] = torch.randn(1, 128, 40 - t - 1) * 5  # change every frame after t
    with torch.no_grad():
        a, b = model.reconstruct(x), model.reconstruct(y)
    torch.testing.assert_close(a[:, :, : t + 1], b[:, :, : t + 1])  # prediction of t+1 uses frames <= t
    assert not torch.allclose(a[:, :, t + 1 :], b[:, :, t + 1 :])
    # and only the receptive field matters: frames before t - RF + 1 do not change prediction t
    z = x.clone()
    z[:, :, : t - TINY.receptive_field + 1] = 0
    with torch.no_grad():
        c = model.reconstruct(z)
    torch.testing.assert_close(a[:, :, t], c[:, :, t])


def test_config_round_trip():
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


@pytest.mark.parametrize("preset, lo, hi", [("tiny", 1e5, 5e5), ("small", 5e5, 2e6), ("paper", 1e7, 1.3e7)])
def test_preset_sizes(preset, lo, hi):
    from mtad.train.config import load_config, with_classes

    cfg = with_classes(load_config(preset), 18, 128)
    assert lo < count_parameters(MultitaskModel(cfg.model)) < hi


def test_arcface_head_margin_and_inference_logits():
    cfg = ModelConfig(n_classes=3, residual_channels=8, skip_channels=16, dilations=(1, 2), resnet_width=8, window=20, head="arcface")
    model = MultitaskModel(cfg).eval()
    x = torch.randn(4, 128, 20)
    with torch.no_grad():
        _, logits, embedding = model(x)
        head = model.classifier.fc
        cos = head.cosine(embedding)
        assert torch.allclose(logits, cfg.arcface_scale * cos, atol=1e-5)  # inference: plain scaled cosine
        target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
        margin = head.margin_logits(embedding, target)
    # the margin lowers the labelled class's logit only, and by exactly the angle m
    assert torch.all(margin[target == 1] < logits[target == 1]) and torch.allclose(margin[target == 0], logits[target == 0], atol=1e-4)
    theta = torch.acos(cos[target == 1].clamp(-1, 1))
    assert torch.allclose(margin[target == 1], cfg.arcface_scale * torch.cos(theta + cfg.arcface_margin), atol=1e-4)
