"""Pure numba kernels on C-contiguous float64 arrays and scalars.

Nothing here validates input: the public modules (``deqbench.fixed_point``,
``deqbench.gradients``, ``deqbench.training``) do that and then call in.
"""
