"""Synthetic models with closed-form risks, training loops and experiments.

Installed as ``iga_theory.synthetic`` (the folder is ``synthetic/``).
"""
