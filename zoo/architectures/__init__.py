"""Architecture builders. Each takes a scheme and keras.applications-style arguments."""

from zoo.architectures.common import Architecture
from zoo.architectures.resnet import RESNET18, RESNET18_CIFAR, RESNET20, RESNET20_BIREAL, RESNET34
from zoo.architectures.vgg import VGG_SMALL

ARCHITECTURES: tuple[Architecture, ...] = (
    RESNET18, RESNET34, RESNET18_CIFAR, RESNET20, RESNET20_BIREAL, VGG_SMALL,
)

__all__ = ["ARCHITECTURES", "Architecture"]
