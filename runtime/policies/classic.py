"""Rule-based policies for `provider = python` models: offline stand-ins for LLM agents.

In: an AskBatch (agent ids, persona columns, loop variables and environment values). Out: one
answer per agent. `level_k` plays "guess 2/3 of the average" with level-k reasoning whose depth
comes from the persona, and anchors on the last winning number, so the average guess falls
round by round as in the AgentScope paper's runs.
"""
from __future__ import annotations

import re

import numpy as np

# Depth of reasoning by field of study: how many times a student applies "2/3 of what others do".
_DEPTH = {"mathematics": 2.0, "economics": 2.0, "physics": 1.5, "computer science": 1.5, "history": 0.5, "art": 0.5}


def level_k(batch) -> np.ndarray:
    """Guess = anchor * ratio**k + noise; anchor is 50 in round one, then the last winning number."""
    n = len(batch.ids)
    game = next((v for v in batch.env.values() if isinstance(v, dict) and "ratio" in v), {})
    ratio = float(game.get("ratio", 2 / 3))
    winners = game.get("winners") or []
    major = batch.persona.get("major")
    depth = np.full(n, 1.0)
    if major is not None:
        depth = np.array([_DEPTH.get(m, 1.0) for m in major.tolist()])
    curiosity = batch.persona.get("curiosity")
    if curiosity is not None:
        depth = depth + np.asarray(curiosity, dtype=float)  # beta(2, 5): adds ~0.3 on average
    # Everyone reasons a little differently: +-0.5 levels of depth and a few points of noise.
    depth = depth + batch.uniforms("level_k.depth") - 0.5
    noise = (batch.uniforms("level_k.noise") - 0.5) * 10.0
    anchor = float(winners[-1]) if winners else 50.0
    guess = anchor * ratio ** np.clip(depth, 0.0, None) + noise
    return np.clip(np.round(guess), 0, 100)


level_k.populace_batch = True


def conditional_cooperation(batch) -> np.ndarray:
    """Public goods: conditional cooperators with a self-serving bias (Fischbacher & Gachter, 2010).

    Round one: contribute trust * 20 tokens. Afterwards: a share of what the agent's group mates
    put in last round on average (state `others_mean`), from 70% (no trust) to 95% (full trust),
    rounded. Everyone gives a little less than the others did, so contributions decline.
    """
    n = len(batch.ids)
    trust = np.asarray(batch.persona.get("trust", np.full(n, 0.5)), dtype=float)
    if int(batch.variables.get("round", 1)) <= 1:
        return np.clip(np.round(20.0 * trust), 0, 20)
    others = np.asarray(batch.state["others_mean"], dtype=float)
    return np.clip(np.round((0.7 + 0.25 * trust) * others), 0, 20)


conditional_cooperation.populace_batch = True


def rumor(batch) -> np.ndarray:
    """Rumour spreading: believe with a probability rising with the share of believing neighbours.

    p = share * (0.2 + 0.8 * gullible): an agent whose friends all believe is convinced with
    probability 0.2 to 1.0 depending on its persona; one whose friends all doubt never is. The
    share comes from the agent's state `friends_believing` (share(neighbors(net).believes)).
    """
    n = len(batch.ids)
    share = np.nan_to_num(np.asarray(batch.state["friends_believing"], dtype=float))
    gullible = np.asarray(batch.persona.get("gullible", np.full(n, 0.5)), dtype=float)
    return batch.uniforms("rumor") < share * (0.2 + 0.8 * gullible)


rumor.populace_batch = True


_ARGUMENTS = {
    "pro": ("The plan creates jobs.", "It will bring the town together.", "Doing nothing costs more."),
    "con": ("The plan wastes money.", "Nobody asked the residents.", "There are better uses for the land."),
}


def debater(batch) -> np.ndarray:
    """Debate in a chat room: keep one's side unless the room leans the other way.

    For a stance (an enum output): an agent starts on its persona's `side`; afterwards it keeps
    its last stance (state `stance_now`, empty at first) and switches with probability
    2 * (share of the room's posts for the other side - 0.5) * (1 - stubbornness) when that
    share is above one half. For a post (a str output): "pro: <argument>" or "con: <argument>".
    """
    n = len(batch.ids)
    side = np.asarray(batch.persona.get("side", np.full(n, "pro", dtype=object)), dtype=object)
    stance = np.asarray(batch.state.get("stance_now", np.full(n, "", dtype=object)), dtype=object)
    stance = np.where(stance == "", side, stance)
    if batch.output["kind"] == "str":
        pick = (batch.uniforms("debater.argument") * 3).astype(int)
        return np.array([f"{s}: {_ARGUMENTS[s][k]}" for s, k in zip(stance.tolist(), pick.tolist())], dtype=object)
    room = next((v for v in batch.env.values() if isinstance(v, dict) and "posts" in v), {"posts": []})
    posts = room["posts"]
    pro = sum(p.startswith("pro:") for p in posts) / len(posts) if posts else 0.5
    stubborn = np.asarray(batch.persona.get("stubbornness", np.full(n, 0.5)), dtype=float)
    other = np.where(stance == "pro", 1.0 - pro, pro)
    switch = batch.uniforms("debater.switch") < 2.0 * np.clip(other - 0.5, 0, None) * (1 - stubborn)
    return np.where(switch, np.where(stance == "pro", "con", "pro"), stance).astype(object)


debater.populace_batch = True


def _farol_predictors(history: list[float]) -> np.ndarray:
    """Arthur's (1994) bag of attendance forecasts from the weeks so far (shares, 0..1)."""
    h = np.asarray(history, dtype=float)

    def back(k):
        return h[-k] if len(h) >= k else h[0]

    def mean(k):
        return float(h[-k:].mean())

    trend = h[-1] + (h[-1] - back(2))
    return np.clip(np.array([
        h[-1], back(2), back(3), back(5), mean(2), mean(3), mean(4), mean(8), float(h.mean()),
        1.2 - h[-1], 1.2 - mean(3), trend, 0.5 * (h[-1] + back(2)) + 0.1, float(np.median(h[-5:])),
    ]), 0.0, 1.0)


def el_farol(batch) -> np.ndarray:
    """El Farol (Arthur, 1994): every patron holds 2 of 14 forecasting rules and trusts the one that
    has been most accurate so far; it goes when that rule forecasts attendance under the threshold.

    Week one: go with probability `sociable`. The rules each patron holds are drawn once from the
    seed and its id; accuracy is the mean absolute error over the weeks seen (`bar.attendance`).
    Nobody can be right on average by copying everyone else, so attendance keeps oscillating
    around the threshold instead of settling.
    """
    from populace.runtime.columns import rng

    n = len(batch.ids)
    bar = next((v for v in batch.env.values() if isinstance(v, dict) and "attendance" in v), {})
    history = [float(x) for x in bar.get("attendance") or []]
    threshold = float(bar.get("threshold", 0.6))
    if not history:
        sociable = np.asarray(batch.persona.get("sociable", np.full(n, threshold)), dtype=float)
        return batch.uniforms("el_farol.first") < sociable
    rules = len(_farol_predictors(history))
    if len(history) > 1:
        past = np.array([_farol_predictors(history[:t]) for t in range(1, len(history))])  # weeks x rules
        error = np.abs(past - np.asarray(history[1:])[:, None]).mean(axis=0)
    else:
        error = np.zeros(rules)
    forecast = _farol_predictors(history)
    held = np.stack([(rng.uniforms(batch.ids, rng.key(batch.seed, "el_farol.rule", j)) * rules).astype(int)
                     for j in range(2)], axis=1)  # patrons x 2 rules (maybe the same one twice)
    best = held[np.arange(n), np.argmin(error[held], axis=1)]
    return forecast[best] < threshold


el_farol.populace_batch = True


def trader(batch) -> np.ndarray:
    """Trade one stock (examples/market): "buy", "sell" or "hold", from the loop's `price` and `change`.

    A fundamentalist (persona `style`) buys when the price is below the value it believes in
    (persona `value`) and sells above it, more surely the larger the gap; a chartist follows the
    last change. Everyone holds now and then.
    """
    n = len(batch.ids)
    price = float(batch.variables.get("price", 100.0))
    change = float(batch.variables.get("change", 0.0))
    value = np.asarray(batch.persona.get("value", np.full(n, price)), dtype=float)
    chartist = np.asarray(batch.persona.get("style", np.full(n, "fundamentalist", dtype=object)), dtype=object) == "chartist"
    gap = (value - price) / price  # > 0: cheap
    conviction = np.where(chartist, 0.6 * np.sign(change), np.clip(gap * 5.0, -1.0, 1.0))
    u = batch.uniforms("trader.order")
    out = np.full(n, "hold", dtype=object)
    out[u < conviction] = "buy"
    out[u < -conviction] = "sell"
    return out


trader.populace_batch = True


_BEFORE = re.compile(r"(\d+) chose A and (\d+) chose B")


def cascade(agent: dict) -> str:
    """Information cascades (Bikhchandani, Hirshleifer & Welch, 1992): a Bayesian guesser of the urn.

    The agent holds a private signal (state `signal`, "A" or "B") and is told, in its prompt, how
    many before it chose each urn ("... 3 chose A and 1 chose B"). With signals of equal accuracy
    the posterior is decided by the count of choices plus its own signal: it chooses the side with
    more, and its own signal on a tie. Once one side leads by two, every later agent herds.
    """
    found = _BEFORE.search(agent["prompt"])
    a, b = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    signal = agent["state"]["signal"]
    lead = a - b + (1 if signal == "A" else -1)
    return "A" if lead > 0 else "B" if lead < 0 else signal
