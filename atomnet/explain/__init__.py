"""Explanations of predicted energies, atom by atom.

    from atomnet.explain import create_analyzer, explain, list_methods
    analyzer = create_analyzer("lrp-gamma", "schnet-md17-ethanol", gamma=0.25)
    [e] = analyzer.analyze(atoms)        # Explanation: e.relevance (n_atoms,) eV, e.unexplained, e.reference

Methods (:func:`list_methods`): ``contributions`` (the model's atom-wise energies), LRP (``lrp-0``,
``lrp-epsilon``, ``lrp-gamma``, ``lrp-alphabeta``, ``deep-taylor``, ``lrp-composite``), and gradient baselines
(``gradient``, ``force-norm``, ``gradient-x-input``, ``integrated-gradients``, ``smoothgrad``). Rules attach
from outside by module type (:mod:`atomnet.explain.propagation`); the model stays plain torch.
Higher-order (GNN-LRP, :mod:`atomnet.explain.walks`): :func:`walks`, :func:`pair_relevance`,
:func:`body_order_relevance`, :func:`subgraph_relevance`.
This package stands on :mod:`atomnet.potential`, :mod:`atomnet.models` and :mod:`atomnet.nn` only.
"""

from atomnet.explain.analyzer import (
    Analyzer,
    analyze_many,
    create_analyzer,
    explain,
    list_methods,
    method_info,
)
from atomnet.explain.explanation import Explanation
from atomnet.explain.walks import (
    WalkExplanation,
    body_order_relevance,
    pair_relevance,
    subgraph_relevance,
    walks,
)

__all__ = [
    "Analyzer",
    "Explanation",
    "analyze_many",
    "create_analyzer",
    "explain",
    "list_methods",
    "method_info",
    "WalkExplanation",
    "body_order_relevance",
    "pair_relevance",
    "subgraph_relevance",
    "walks",
]
