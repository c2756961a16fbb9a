"""LaTeX proofs of the theorems and the sympy scripts that check their algebra.

Installed as ``iga_theory.proofs`` (the folder is ``proofs/``).
"""
