"""Invariant Gradient Alignment (IGA): exact operators, theory checks and experiments.

The package installs three folders of the repository under one namespace so that no
top-level module named ``synthetic`` or ``llm`` is created:

* ``iga_theory``            (folder ``iga_theory/``): operators and theory quantities;
* ``iga_theory.synthetic``  (folder ``synthetic/``): synthetic models and experiments;
* ``iga_theory.llm``        (folder ``llm/``): the LLM side (isomer sets, LoRA operator);
* ``iga_theory.proofs``     (folder ``proofs/``): LaTeX proofs and their sympy checks.
"""

from iga_theory.errors import IGAWarning

__version__ = "0.1.0"

__all__ = ["IGAWarning", "__version__"]
