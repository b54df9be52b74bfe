import pytest
import torch

from satune.models import ARCHITECTURES, create_model
from satune.specs import ModelSpec


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_with_one_head_per_task(arch):
    shape = (1, 28, 28) if arch == "small_cnn" else (3, 32, 32)
    model = create_model(ModelSpec(arch=arch), shape, [10, 7], [0.5] * shape[0], [0.25] * shape[0]).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        primary, aux = model.forward_heads(x)
        assert model(x).shape == (2, 10) and primary.shape == (2, 10) and aux.shape == (2, 7)


def test_small_cnn_size():
    model = create_model(ModelSpec(), (1, 28, 28), [10], [0.1], [0.3])
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 80_000
    assert create_model(ModelSpec(), (1, 8, 8), [10], [0.1], [0.3])(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_normalisation_is_inside_the_model():
    torch.manual_seed(0)
    model = create_model(ModelSpec(), (3, 8, 8), [4], [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]).eval()
    x = torch.rand(2, 3, 8, 8)
    normalised = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2
    with torch.no_grad():
        assert torch.allclose(model(x), model.heads[0](model.backbone(normalised)), atol=1e-6)
    assert "normalize.mean" in model.state_dict()  # travels with checkpoints


def test_preact_resnet18_matches_sats_widths():
    model = create_model(ModelSpec(arch="preact_resnet18"), (3, 32, 32), [10], [0.5] * 3, [0.25] * 3)
    assert model.heads[0].in_features == 512
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [c.out_channels for c in convs][:3] == [64, 128, 128]
