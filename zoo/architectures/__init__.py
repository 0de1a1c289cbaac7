"""Architecture builders. Each takes a scheme and keras.applications-style arguments."""

from zoo.architectures.common import Architecture
from zoo.architectures.resnet import RESNET18, RESNET18_CIFAR, RESNET20, RESNET20_BIREAL, RESNET34
from zoo.architectures.resnet import RESNET18_OFFICIAL, RESNET20_OFFICIAL, RESNET34_OFFICIAL
from zoo.architectures.resnet_widened import WIDENED_RESNET18_CIFAR
from zoo.architectures.vgg import VGG_SMALL
from zoo.architectures.wrn import WRN22, WRN40

ARCHITECTURES: tuple[Architecture, ...] = (
    RESNET18, RESNET34, RESNET18_CIFAR, RESNET20, RESNET20_BIREAL, VGG_SMALL, WRN22, WRN40,
    *WIDENED_RESNET18_CIFAR.values(), RESNET20_OFFICIAL, RESNET18_OFFICIAL, RESNET34_OFFICIAL,
)

__all__ = ["ARCHITECTURES", "Architecture"]
