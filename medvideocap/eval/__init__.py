"""Evaluation of trained checkpoints (``medvideocap eval``): the MedGen paper's protocol, offline.

The paper scores 200 prompts on VBench dimensions, VideoScore and doctors' pairwise ratings. The
``vbench`` package cannot share our environment (it pins ``numpy<2`` and ``transformers==4.33.2``) and
downloads every model at run time, so each dimension is implemented here from its published definition on
the field's models through transformers, torchvision and OpenCV (:mod:`medvideocap.eval.metrics`, one
module per metric, each saying how it relates to VBench's). The room's layout: :mod:`.prompts` (what to
generate), :mod:`.runner` (generate + score, resumable), :mod:`.report` (tables, plots, contact sheet),
:mod:`.compare` (paired bootstrap between runs), :mod:`.ratings` (blind pairwise sheets).
"""
