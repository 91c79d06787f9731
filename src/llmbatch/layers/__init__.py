"""Model building blocks: attention backends, norms, activations, rotary embedding."""
