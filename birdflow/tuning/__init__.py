"""Learn the objective's hyperparameters by implicit differentiation (``birdflow tune``).

The inner problem is the BirdFlow fit ``w*(θ) = argmin_w L_in(w, θ)``; the outer loss is the
negative mean interval log-likelihood of a *tuning* split of the birds. Modules: :mod:`split`
(tuning vs validation birds), :mod:`likelihood` (differentiable interval log-likelihood),
:mod:`inner` (the inner objective), :mod:`curvature` (Hessian-vector products, gauge, scale,
CG), :mod:`newton` (stationary inner fits), :mod:`hypergrad` (implicit and unrolled
hypergradients), :mod:`descent` (the downhill step rule), :mod:`search` (the outer loop),
:mod:`outer` (set-up and the tune run dir).
"""
