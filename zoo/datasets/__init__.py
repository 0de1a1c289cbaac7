"""Custom TFDS dataset builders (importing this registers them with TFDS)."""

from zoo.datasets.fashion_mnist import ZooFashionMnist

__all__ = ["ZooFashionMnist"]
