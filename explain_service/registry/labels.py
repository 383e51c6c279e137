"""What a model predicts: its task, and its class names matched to its own labels.

Class names are matched to the estimator's labels **by value, never by position**:

* an estimator with ``classes_`` (scikit-learn, XGBoost's sklearn wrappers) answers its
  probability columns in ``classes_`` order, so the manifest's ``class_names`` are that
  order. Given names must be the same set of labels (in any order), or, when the labels
  are integer-coded ``0..k-1`` (booleans count as ``0, 1``), ``k`` display names for
  ``0..k-1`` in that order;
* an ``xgboost.Booster`` only knows class indices, so given names name ``0..num_class-1``
  in order.

Anything else is a :class:`~explain_service.errors.RegistrationError` showing both lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain_service.errors import RegistrationError


@dataclass(frozen=True)
class Labels:
    """The manifest's class names, in the model's column order, and the raw label behind each."""

    names: tuple[str, ...]
    raw: tuple[str, ...]  # str() of the estimator's own label per column ("0".."k-1" for boosters)

    def display(self, raw_label: Any) -> str:
        """The class name of one of the estimator's own labels (as ``predict`` returns it)."""
        return self.names[self.raw.index(_text(raw_label))]


def _text(label: Any) -> str:
    return str(label.item() if isinstance(label, np.generic) else label)


def booster_learner(booster: Any) -> tuple[str, int]:
    """Objective name and number of classes from a Booster's own configuration."""
    learner = json.loads(booster.save_config())["learner"]
    return str(learner["objective"]["name"]), int(learner["learner_model_param"]["num_class"])


def infer_task(final: Any) -> str:
    """``classification`` or ``regression`` from the final estimator."""
    import xgboost as xgb
    from sklearn.base import is_classifier, is_regressor

    if isinstance(final, xgb.Booster):
        objective = str(final.attr("objective") or booster_learner(final)[0])
        return "classification" if objective.startswith(("binary:", "multi:")) else "regression"
    if is_classifier(final):
        return "classification"
    if is_regressor(final):
        return "regression"
    raise RegistrationError(f"{type(final).__name__} is neither a classifier nor a regressor")


def class_labels(final: Any, given: list[str] | None) -> Labels:
    """Match ``given`` class names to the final estimator's labels (see the module docstring)."""
    import xgboost as xgb

    if isinstance(final, xgb.Booster):
        objective, num_class = booster_learner(final)
        n = 2 if objective.startswith("binary:") else int(final.attr("num_class") or num_class)
        raw = tuple(str(i) for i in range(n))
        names = [str(c) for c in given] if given is not None else list(raw)
        if len(names) != n:
            raise RegistrationError(
                f"class_names {names} has {len(names)} entries, the booster has {n} classes "
                f"(class indices {list(raw)}; names are given for 0..{n - 1} in order)"
            )
        return Labels(tuple(names), raw)
    classes = list(getattr(final, "classes_", []))
    if not classes:
        raise RegistrationError("the classifier has no classes_; is it fitted?")
    raw = tuple(_text(c) for c in classes)
    if len(set(raw)) != len(raw):
        raise RegistrationError(f"the model's classes_ {list(raw)} are not distinct as text")
    if given is None:
        return Labels(raw, raw)
    names = [str(c) for c in given]
    if len(set(names)) != len(names):
        raise RegistrationError(f"class_names {names} repeats a name")
    if set(names) == set(raw):
        # Same labels in any order: the model's own order decides which column is which.
        return Labels(raw, raw)
    if _integer_coded(classes) and len(names) == len(raw):
        return Labels(tuple(names), raw)
    hint = (
        f"; integer-coded labels 0..{len(raw) - 1} may instead be renamed by {len(raw)} names in order"
        if _integer_coded(classes)
        else ""
    )
    raise RegistrationError(
        f"class_names {names} do not match the model's classes_ {list(raw)}: give the same labels "
        f"(any order){hint}"
    )


def _integer_coded(classes: list[Any]) -> bool:
    """Labels 0..k-1 (booleans as False=0, True=1)."""
    values = np.asarray(classes)
    if values.dtype == bool:
        return True
    if values.dtype.kind not in "iu":
        return False
    return bool(np.array_equal(np.sort(values), np.arange(len(values))))
