"""Annotation suggestions: which unknown (image, class) labels to ask for next, and merging the answers.

* :mod:`mlrkit.annotation.strategies`: the query strategies (registry ``STRATEGIES``) and the
  budgeted, optionally per-image, selection of entries;
* :mod:`mlrkit.annotation.answers`: reading yes/no answers and merging them into observed labels,
  manifests and features files (``mlrkit apply-answers``);
* :mod:`mlrkit.annotation.suggest`: scoring a trained run's training split (``mlrkit suggest-labels``);
* :mod:`mlrkit.annotation.simulate`: annotation rounds answered from the hidden ground truth
  (``mlrkit simulate-annotation``).

This package sits above the engine (it trains and loads runs); nothing below imports it.
"""
