"""Offline policies shipped with Populace: `provider = python` models named `populace.runtime.policies:NAME`.

classic.py holds the examples' policies (level-k, conditional cooperation, ...); paper.py the seed
paper's stand-ins for three LLMs (`populace.runtime.policies.paper:model_a`).
"""
from .classic import cascade, conditional_cooperation, debater, el_farol, level_k, rumor, trader

__all__ = ["cascade", "conditional_cooperation", "debater", "el_farol", "level_k", "rumor", "trader"]
