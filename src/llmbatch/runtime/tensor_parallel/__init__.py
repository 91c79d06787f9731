"""Tensor parallelism: the driver (rank 0, in the engine's process), its workers, and what passes between them."""
