"""Pure-PyTorch model code: no Lightning, torchmetrics, W&B or OmegaConf (DESIGN.md)."""

from hmrnn.core.boundary import BoundaryEstimator, boundary, hard_sigmoid
from hmrnn.core.hmlstm import HMLSTM, HMLSTMState, count_parameters
from hmrnn.core.lm import CharLM, LMOutput
from hmrnn.core.lstm import StackedLSTM
from hmrnn.core.output import OutputModule
from hmrnn.core.reference import reference_forward

__all__ = [
    "HMLSTM",
    "BoundaryEstimator",
    "CharLM",
    "HMLSTMState",
    "LMOutput",
    "OutputModule",
    "StackedLSTM",
    "boundary",
    "count_parameters",
    "hard_sigmoid",
    "reference_forward",
]
