"""Print forward/backward consistency of a fitted model: backward recovery and route frequencies.

usage: python scripts/route_consistency.py <run dir>   (weeks 9..30; bound 1.2 B, see tests/test_routes.py)
"""
import sys

import numpy as np

from birdflow.model.fitted import load_model

m = load_model(sys.argv[1] if len(sys.argv) > 1 else "outputs/acc14")
b = m.predict(m.distr_at(29), 30, 9, direction="backward").values
print("backward 30->9: max |p - mu_t| over weeks 9..30 =",
      max(np.abs(b[k] - m.distr_at(29 - k)).max() for k in range(22)), " (mu sums", m.distr_at(8).sum(), ")")
n = 20000
for direction, start in (("forward", 9), ("backward", 30)):
    df = m.route(n, start, 39 - start, direction=direction, from_marginals=True, seed=1)
    cells = (df.sort_values(["route_id", "date"], kind="stable")["i"].to_numpy() - 1).reshape(n, -1)
    worst = 0.0
    for k in range(cells.shape[1]):
        p = m.distr_at(8 + k)
        tv = 0.5 * np.abs(np.bincount(cells[:, k], minlength=m.n_cells) / n - p).sum()
        worst = max(worst, tv / (1.2 * 0.5 * np.sqrt(p * (1 - p) / n).sum()))
    print(f"{direction}: {n} routes weeks 9..30, max TV / bound (1.2 B) = {worst:.3f}")
