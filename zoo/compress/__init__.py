"""Compression with TF-MOT: pruning, channel pruning, quantization-aware training.

>>> from zoo import compress
>>> pruning = compress.prune(model, 0.5, end_step=epochs * steps)       # float layers, TF-MOT
>>> pruning.model.compile(...); pruning.model.fit(data, epochs=epochs, callbacks=pruning.callbacks)
>>> pruned = compress.strip(pruning.model)
>>> narrow = compress.prune(model, 0.5, structure="channel", data=train).model   # HRank filters
>>> qat = compress.quantize(narrow, train); qat.compile(...); qat.fit(...)        # int8 float parts
>>> compress.export(qat, "model.tflite")                                          # zoo.deploy.convert

:mod:`~zoo.compress.pruning` (magnitude and 2:4 pruning of float layers),
:mod:`~zoo.compress.channels` (HRank filter pruning that rebuilds a narrower model, binary
convs included), :mod:`~zoo.compress.quantization` (QAT of the float parts, binary convs
left to Larq) and :mod:`~zoo.compress.pipeline` (``zoo compress``).
"""

from zoo.compress.channels import channel_prune, hrank_scores, masked, match_statistics, narrow, prunable_convs
from zoo.compress.common import Pruning, fine_tunable_inference
from zoo.compress.pipeline import PRUNE_LEARNING_RATE, QAT_LEARNING_RATE, export, fine_tune, run_pipeline
from zoo.compress.pruning import prunable_layers, prune, sparsity_report, strip
from zoo.compress.quantization import quantize, quantize_scope

__all__ = [
    "PRUNE_LEARNING_RATE",
    "Pruning",
    "QAT_LEARNING_RATE",
    "channel_prune",
    "export",
    "fine_tunable_inference",
    "fine_tune",
    "hrank_scores",
    "masked",
    "match_statistics",
    "narrow",
    "prunable_convs",
    "prunable_layers",
    "prune",
    "quantize",
    "quantize_scope",
    "run_pipeline",
    "sparsity_report",
    "strip",
]
