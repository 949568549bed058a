"""Architectures, the import-path factory and the served (calibrated) model."""

import numpy as np
import pytest
import torch

from kdflow.models import CalibratedClassifier, ModelSpecError, build_model, count_parameters


@pytest.mark.parametrize(
    "arch,shape,args",
    [
        ("mlp", (40,), {"width": 32, "depth": 2}),
        ("cnn1d", (40,), {"channels": 8, "depth": 3}),
        ("cnn2d", (8, 8), {"channels": 8, "depth": 2}),
    ],
)
def test_registered_architectures_map_inputs_to_logits(arch, shape, args):
    model = build_model(arch, args, shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert count_parameters(model) > 0


def test_width_and_depth_change_size():
    small = count_parameters(build_model("cnn1d", {"channels": 8, "depth": 2}, (40,), 10))
    big = count_parameters(build_model("cnn1d", {"channels": 32, "depth": 4}, (40,), 10))
    assert big > 10 * small


def test_import_path_factory_builds_user_module():
    model = build_model("tests.user_models:build_linear", {"bias": False}, (12,), 3)
    assert model(torch.randn(2, 12)).shape == (2, 3)


def test_unknown_arch_and_bad_import_path_are_clear_errors():
    with pytest.raises(ModelSpecError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000", {}, (40,), 10)
    with pytest.raises(ModelSpecError, match="cannot import model factory"):
        build_model("no_such_pkg.mod:build", {}, (40,), 10)
    with pytest.raises(ModelSpecError, match="rejected its arguments"):
        build_model("mlp", {"widht": 3}, (40,), 10)


def test_feature_width_the_model_cannot_take_is_named():
    with pytest.raises(ModelSpecError, match=r"cannot take inputs of shape \[40\]"):
        build_model("tests.user_models:build_fixed_width", {"width": 64}, (40,), 10)
    with pytest.raises(ModelSpecError, match="cnn2d needs a 2-D input shape"):
        build_model("cnn2d", {}, (40,), 10)


def test_cnn1d_length_argument_is_a_clear_error():
    """The sequence length is the flattened input's; a config that still passes ``length`` is told so."""
    with pytest.raises(ModelSpecError, match=r"cnn1d takes no 'length' argument \(got length=40\).*shape \[40\]"):
        build_model("cnn1d", {"length": 40, "channels": 8}, (40,), 10)


def test_served_probabilities_are_softmax_of_logits_over_calibrated_temperature():
    torch.manual_seed(0)
    inner = build_model("mlp", {"width": 16}, (6,), 4)
    served = CalibratedClassifier(inner, temperature=1.7).eval()
    x = torch.randn(8, 6)
    with torch.no_grad():
        expected = torch.softmax(inner(x) / 1.7, dim=1)
        assert torch.allclose(served(x), expected, atol=1e-7)
        assert torch.allclose(served.logits(x), inner(x))
    assert float(served.temperature) == pytest.approx(1.7)
    with pytest.raises(ValueError):
        CalibratedClassifier(inner, 0.0)


def test_served_model_applies_its_calibration_map_after_the_temperature():
    from kdflow.calibration import VectorScaling

    inner = build_model("mlp", {"width": 8, "depth": 1}, (6,), 3, "robust")
    vs = VectorScaling(torch.tensor([2.0, 1.0, 0.5]), torch.tensor([0.0, 0.3, -0.3]))
    served = CalibratedClassifier(inner, 1.7, vs).eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = torch.softmax(inner(x) / 1.7 * vs.weight + vs.bias, dim=1)
        torch.testing.assert_close(served(x), expected)
        np.testing.assert_allclose(served.mapped_probabilities(inner(x).numpy()), expected.numpy(), rtol=1e-6)
    assert served.map_kind == "vector" and CalibratedClassifier(inner, 1.7).map_kind == "temperature"
    assert CalibratedClassifier(inner, 1.7).mapped_probabilities(np.zeros((1, 3), np.float32)) is None
