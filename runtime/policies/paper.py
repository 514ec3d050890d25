"""Offline stand-ins for the three LLMs of the AgentScope paper's "guess 2/3 of the average" runs.

In: an AskBatch from examples/paper/guess.pop (persona columns `education` and `occupation`, the
rendered system prompt and prompt, the `game` board: `ratio`, `temperature`, `winners`). Out: one
guess in 0..100 per agent.

Each stand-in reasons level-k: guess = anchor * ratio ** depth, anchored on 50 in round one and on
the last winning number afterwards. What an LLM reads changes the depth, as the paper observed:
a "think step by step" prompt adds a level, naming the famous 2/3 game adds levels and sends some
agents straight to the equilibrium 0, education and occupation set the base depth (professors of
game theory deepest), and the ratio comes from the game (51/100 lowers every guess). The sampling
temperature scales the noise. The figures are made up to show the mechanics, not fitted to any
model; model_a, model_b and model_c differ only in a depth offset and their noise.
"""
from __future__ import annotations

import numpy as np

# Levels of "apply the ratio to what the others do", by background.
EDUCATION_DEPTH = {"Elementary School": 0.3, "High School": 0.7, "Bachelor's Degree": 1.2,
                   "Master's Degree": 1.6, "Ph.D.": 2.0}
OCCUPATION_DEPTH = {"Professor of Game Theory": 3.5, "Economist": 2.3, "Psychologist": 1.4,
                    "Athlete": 0.6, "Artist": 0.5, "Writer": 0.8}
UNSPECIFIED_DEPTH = 1.2  # an assistant without a background answers like a graduate
STEP_BY_STEP_DEPTH = 1.0
FAMOUS_DEPTH = 0.8
FAMOUS_EQUILIBRIUM_SHARE = 0.15  # naming the famous game: this share answers the textbook 0


def _game(batch) -> dict:
    return next((v for v in batch.env.values() if isinstance(v, dict) and "ratio" in v), {})


def _texts_contain(texts, needle: str, n: int) -> np.ndarray:
    """Per agent: does its text (one str for all, or one per agent) contain needle (case-blind)?"""
    if texts is None:
        return np.zeros(n, dtype=bool)
    if isinstance(texts, str):
        return np.full(n, needle in texts.lower())
    seen: dict = {}  # agents share text objects; look at each distinct text once
    return np.fromiter((seen[t] if t in seen else seen.setdefault(t, needle in t.lower()) for t in texts),
                       dtype=bool, count=n)


def _base_depth(batch, n: int) -> np.ndarray:
    depth = np.full(n, UNSPECIFIED_DEPTH)
    education, occupation = batch.persona.get("education"), batch.persona.get("occupation")
    known = np.zeros(n, dtype=bool)
    total = np.zeros(n)
    for column, table in ((education, EDUCATION_DEPTH), (occupation, OCCUPATION_DEPTH)):
        if column is None:
            continue
        values = np.array([table.get(v, np.nan) for v in column.tolist()])
        present = ~np.isnan(values)
        # An agent with both fields reasons like the deeper of the two, a little deeper still.
        total = np.where(present & known, np.maximum(total, values) + 0.2, np.where(present, values, total))
        known |= present
    return np.where(known, total, depth)


def _guesses(batch, offset: float, noise_scale: float) -> np.ndarray:
    n = len(batch.ids)
    game = _game(batch)
    ratio = float(game.get("ratio", 2 / 3))
    temperature = float(game.get("temperature", 0.7))
    winners = game.get("winners") or []
    depth = _base_depth(batch, n) + offset
    step_by_step = _texts_contain(batch.prompt, "step by step", n)
    famous = _texts_contain(batch.system, "famous", n)
    depth = depth + STEP_BY_STEP_DEPTH * step_by_step + FAMOUS_DEPTH * famous
    # Temperature spreads the depth of reasoning and the number itself.
    depth = depth + (batch.uniforms("paper.depth") - 0.5) * (0.5 + temperature)
    noise = (batch.uniforms("paper.noise") - 0.5) * noise_scale * (1.0 + 4.0 * temperature)
    anchor = float(winners[-1]) if winners else 50.0
    guess = anchor * ratio ** np.clip(depth, 0.0, None) + noise
    equilibrium = famous & (batch.uniforms("paper.equilibrium") < FAMOUS_EQUILIBRIUM_SHARE)
    guess = np.where(equilibrium, 0.0, guess)
    return np.clip(np.round(guess, 2), 0.0, 100.0)


def model_a(batch) -> np.ndarray:
    """Stand-in for the first model: the baseline depths."""
    return _guesses(batch, offset=0.0, noise_scale=2.0)


def model_b(batch) -> np.ndarray:
    """Stand-in for the second model: half a level deeper, less noise."""
    return _guesses(batch, offset=0.5, noise_scale=1.5)


def model_c(batch) -> np.ndarray:
    """Stand-in for the third model: half a level shallower, more noise."""
    return _guesses(batch, offset=-0.5, noise_scale=3.0)


for _policy in (model_a, model_b, model_c):
    _policy.populace_batch = True
