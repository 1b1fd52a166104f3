"""Models: the GPEX approximate GP, reference classifiers (ANNs to explain) and their training helpers."""

from .cifar_resnet import BasicBlock, CifarResNet, cifar_resnet18
from .classifier_training import accuracy, fit_classifier, predict_logits
from .digits_cnn import DigitsCNN
from .gpex_model import GPEXModel

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "DigitsCNN",
    "GPEXModel",
    "accuracy",
    "cifar_resnet18",
    "fit_classifier",
    "predict_logits",
]
