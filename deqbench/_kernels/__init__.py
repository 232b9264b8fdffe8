"""Pure numba kernels on C-contiguous float32 or float64 arrays (one dtype per call) and scalars.

Nothing here validates input: the public calls (``deqbench._fixed_point``,
``deqbench._gradients``, ``deqbench._training``, ``deqbench._flow``) do that
and then call in.
"""
