"""Attention-MIL models, found by name in a registry (timm's ``create_model`` style).

    from mil.models import Head, create_model

    model = create_model("abmil", in_dim=1024, heads=[Head("er", 1), Head("survival", 4)], hidden=256)
    out = model(x)                      # x: float (N, 1024), ONE bag
    out.logits["er"]                    # (1,) logit; out.logits["survival"]: (4,) hazard logits
    out.attention["er"]                 # (N,) one score per instance
    out.instance_loss                   # auxiliary loss (CLAM, DSMIL) when labels are passed in training

Every model has ONE shared instance encoder (Linear in_dim->hidden, ReLU, Dropout) and a
separate aggregation head per task, so several targets train together while a task with
an unknown label simply drops out of the loss (:mod:`mil.losses`).

Models (:data:`MODELS`): ``mean``, ``max`` (pooling baselines; importance = the instance's
own head score), ``abmil``, ``gated-abmil`` (Ilse et al. 2018), ``clam-sb``, ``clam-mb``
(Lu et al. 2021, with the instance-clustering loss), ``transmil`` (Shao et al. 2021,
Nyström attention + PPEG), ``dsmil`` (Li et al. 2021). Attention models return softmax
weights that sum to 1 over the instances. No model builds an N × N matrix.
"""

from . import abmil, clam, dsmil, pooling, transmil  # noqa: F401  (register the models)
from .base import MODELS, Head, MILModel, MILOutput, create_model, register_model

__all__ = ["MODELS", "Head", "MILModel", "MILOutput", "create_model", "register_model"]
