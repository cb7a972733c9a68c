"""Training LUSIFER: stage 1 (alignment), stage 2 (representation finetuning), LoRA merge.

Needs the ``[train]`` extra.
"""
