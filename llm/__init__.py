"""The LLM side: Logical Isomer Sets, the IGA operator on PEFT LoRA layers, distillation.

Installed as ``iga_theory.llm`` (the folder is ``llm/``); no top-level module named
``llm`` is created, because ``llm`` is an existing PyPI distribution.
"""
