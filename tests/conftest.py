"""Set-up shared by the whole test session, before any test module is collected."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET once, when it is first imported, and importing lightning imports
# it: without a GPU the variable must be set before the first test module that imports lightning
# is collected, or tests/core/test_triton.py finds Triton compiled for a GPU it does not have.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
