"""The covariates-only model: what the clinical covariates predict without the slide. It is
fitted on the same folds as the fused model and reported beside it, so the image's
contribution is the difference; the fused model also starts from it (:mod:`mil.train`).

Per task: a linear model of the encoded covariates (logistic, multinomial, linear,
discrete-time hazards or Cox, as the task's kind) with the fused model's loss and class
weights (:mod:`mil.tasks`), fitted to convergence with L-BFGS and a small ridge penalty
(:data:`RIDGE`, on standardized covariates). No early stopping is needed: a ridge-penalized
linear model of a few covariates does not overfit a cohort the way a MIL model can.
"""

from __future__ import annotations

import numpy as np
import torch

from .losses import cox_loss
from .runfolder import prediction_record
from .tasks import KINDS

RIDGE = 1e-2        # L2 penalty on the covariate weights (mean loss per case + RIDGE * |w|^2)
ITERATIONS = 200


def fit_linear(cohort, objective, rows: np.ndarray,
               covariates: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """task -> (weight (C, n_outputs), bias (n_outputs,)) of the covariates-only model fitted on
    ``rows`` with ``objective`` (its kinds' class weights, time bins and target scaling, fitted
    on the same rows). A survival NLL head's bias starts at the baseline hazard; a Cox head has none."""
    x = covariates.double()[rows]
    out = {}
    for task in cohort.tasks:
        kind, fitted = KINDS[task.kind], objective.fitted[task.name]
        y = torch.from_numpy(cohort.labels(task.name)[rows]).double()
        n_out = kind.n_outputs(task.n_classes, objective.options)
        weight = torch.zeros(x.shape[1], n_out, dtype=torch.float64, requires_grad=True)
        start = fitted.hazard_logits if fitted.hazard_logits is not None else np.zeros(n_out)
        cox = task.kind == "survival" and objective.options.survival_loss == "cox"
        bias = torch.tensor(start, dtype=torch.float64, requires_grad=not cox)
        optimizer = torch.optim.LBFGS([weight] + ([] if cox else [bias]), max_iter=ITERATIONS,
                                      line_search_fn="strong_wolfe")

        def closure(kind=kind, fitted=fitted, y=y, weight=weight, bias=bias, optimizer=optimizer):
            optimizer.zero_grad()
            pred = x @ weight + bias
            loss = kind.loss(pred, y, fitted, objective.options)
            if loss is None:  # Cox: the partial likelihood over all the rows
                loss = cox_loss(pred[:, 0], y[:, 0], y[:, 1])
            loss = loss + RIDGE * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        out[task.name] = (weight.detach().numpy(), bias.detach().numpy())
    return out


def covariates_only(cohort, objective, train: np.ndarray, test: np.ndarray, covariates: torch.Tensor,
                    fold: int) -> list[dict]:
    """``predictions.csv`` rows of the covariates-only model for ``test``, fitted on ``train``."""
    models = fit_linear(cohort, objective, train, covariates)
    x = covariates.double()[test].numpy()
    table = cohort.table
    rows = []
    for i, row in enumerate(test):
        for task in cohort.tasks:
            weight, bias = models[task.name]
            score = KINDS[task.kind].score(torch.from_numpy(x[i] @ weight + bias), objective.fitted[task.name],
                                           objective.options)
            rows.append(prediction_record(task, str(table.at[row, "slide_id"]), str(table.at[row, "patient_id"]),
                                          fold, cohort.labels(task.name)[row], score))
    return rows
