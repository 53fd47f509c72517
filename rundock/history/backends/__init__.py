"""Run history backends, one module each; each registers its URI scheme."""
