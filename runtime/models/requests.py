"""What a model is sent for one agent: the system prompt, the agent's memory and the prompt.

In: an agent's system prompt (or None), its memory (("user" | "assistant", text) entries, oldest
first), the rendered prompt, the ask's output type and whether the ask is `verbatim`. Out: the
request as the providers take it: {"system": text or None, "messages": [{"role", "content"}]}.
The LLM clients send exactly this (llm.py), with the system prompt as Anthropic's text blocks
and cache breakpoints (`system_blocks`), and `populace prompt` and `--save-prompts` show exactly
this, so what a user inspects is what was sent.
"""
from __future__ import annotations

from . import replies


def user_text(prompt: str, output: dict, verbatim: bool = False) -> str:
    """The prompt with the reply instruction for typed outputs ("Reply with one whole number from 0 to
    100 only."), unless the ask is verbatim (its template says how to answer)."""
    suffix = "" if verbatim else replies.instruction(output)
    return prompt + ("\n\n" + suffix if suffix else "")


def messages(memory: list, prompt: str) -> list[dict]:
    """Memory then the prompt, with consecutive turns of one role merged (the APIs alternate roles)."""
    out: list[dict] = []
    for role, text in list(memory) + [("user", prompt)]:
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + text}
        else:
            out.append({"role": role, "content": text})
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": "(earlier)"})
    return out


def request(system, memory: list, prompt: str, output: dict, verbatim: bool = False) -> dict:
    return {"system": system, "messages": messages(memory, user_text(prompt, output, verbatim))}


def system_blocks(system: str, shared: int, cache: bool) -> list[dict]:
    """Anthropic's system blocks. With `cache`, the whole system prompt is a cache breakpoint (an
    agent's own prompt, read again in its later rounds), and when its first `shared` characters are
    every agent's, a breakpoint ends there too, so that part is written once for all agents. The
    text sent is the same either way: the split only says where the provider may cache."""
    if not cache:
        return [{"type": "text", "text": system}]
    mark = {"type": "ephemeral"}
    if 0 < shared < len(system):
        return [{"type": "text", "text": system[:shared], "cache_control": mark},
                {"type": "text", "text": system[shared:], "cache_control": mark}]
    return [{"type": "text", "text": system, "cache_control": mark}]
