"""A user's own modules, built through the ``package.module:build`` factory in tests."""

from torch import nn


def build_linear(input_shape, num_classes, bias=True):
    """A linear classifier over flattened inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(input_shape[0]), num_classes, bias=bias))


def build_fixed_width(input_shape, num_classes, width=64):
    """A model hard-wired to ``width`` features, whatever the data say."""
    return nn.Linear(width, num_classes)
