"""Searched architectures: a genotype (cells of binary and float ops) and its builder.

The architecture side of ``zoo search`` (docs/search.md): :mod:`~zoo.architectures.searched.ops`
(the op set), :mod:`~zoo.architectures.searched.network` (genotype and builder) and
:mod:`~zoo.architectures.searched.config` (the searched-architecture file the registry
serves). Like every builder here it takes a scheme and never imports one, nor the search.
"""
