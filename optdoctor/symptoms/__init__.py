"""Symptoms: pure functions from probe traces to named numbers (the rules' vocabulary).

Importing this package registers every producer; ``SYMPTOMS`` documents each name.
"""

from optdoctor.symptoms import activations, curvature, data, generalization, gradients, loss, variants  # noqa: F401  (registration)
from optdoctor.symptoms.registry import PRODUCERS, SYMPTOMS, SymptomDef, extract

__all__ = ["SYMPTOMS", "PRODUCERS", "SymptomDef", "extract"]
