from __future__ import annotations

import torch

from medvideocap.devices import resolve_device


def test_auto_is_cuda_when_torch_sees_one_else_the_cpu_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto") == resolve_device(None) == expected


def test_an_explicit_device_is_passed_through_untouched() -> None:
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
