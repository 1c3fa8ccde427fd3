"""Array type aliases used across birdflow (shapes in the names, jaxtyping style)."""

from __future__ import annotations

from jaxtyping import Array, Bool, Float, Int

Distr = Float[Array, "cell"]  # one distribution over cells (or slots)
WeeklyDistr = Float[Array, "week slot"]  # one distribution per week, padded to n_max slots
Marginals = Float[Array, "transition slot slot_to"]  # joint P(X_t = i, X_{t+1} = j)
Transitions = Float[Array, "transition slot slot_to"]  # row-stochastic P(X_{t+1} = j | X_t = i)
Logits = Float[Array, "transition slot slot_to"]
SlotMask = Bool[Array, "week slot"]
SlotCell = Int[Array, "week slot"]
