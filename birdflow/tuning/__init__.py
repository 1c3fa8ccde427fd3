"""Learn the objective's hyperparameters by implicit differentiation (``birdflow tune``).

The inner problem is the BirdFlow fit ``w*(θ) = argmin_w L_in(w, θ)``; the outer loss is the
negative mean interval log-likelihood of a *tuning* split of the birds. Modules: :mod:`split`
(tuning vs validation birds), :mod:`likelihood` (differentiable interval log-likelihood),
:mod:`inner` (the inner objective), :mod:`curvature` (Hessian-vector products, gauge, scale,
CG), :mod:`newton` (stationary inner fits), :mod:`hypergrad` (implicit and unrolled
hypergradients), :mod:`descent` (the downhill step rule), :mod:`search` (the outer loop),
:mod:`problem` (one species' set-up), :mod:`outer` (the tune run dir); for several species
:mod:`traits` (θ of each species: pooled or a linear trait model), :mod:`joint` (the joint
outer loop) and :mod:`transfer` (leave-one-out transfer between species).
"""
