"""ray-distill: data-efficient reasoning distillation (DED) on Ray."""

__version__ = "0.1.0"
