"""Distillation: fit the GPs that explain a network (Alg. 2) and measure their faithfulness."""

from .checkpointing import load_checkpoint, save_checkpoint
from .default_kernel_network import DefaultKernelNetwork, default_kernel_network
from .distiller import Distiller, distill
from .faithfulness import FaithfulnessReport, faithfulness, plot_faithfulness, predict_gp_and_ann
from .input_mixing import mix_inputs
from .metrics import pearson_per_head
from .saved_explainer import SavedExplainer, load_explainer, save_explainer
from .training_loop import run_training
from .training_state import RowSweep, TrainingState

__all__ = [
    "DefaultKernelNetwork",
    "Distiller",
    "FaithfulnessReport",
    "RowSweep",
    "SavedExplainer",
    "TrainingState",
    "default_kernel_network",
    "distill",
    "faithfulness",
    "load_checkpoint",
    "load_explainer",
    "mix_inputs",
    "pearson_per_head",
    "plot_faithfulness",
    "predict_gp_and_ann",
    "run_training",
    "save_checkpoint",
    "save_explainer",
]
