"""reapkit: observe, score, plan and prune the experts of Mixture-of-Experts language models."""

__version__ = "0.1.0"
