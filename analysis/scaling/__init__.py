"""Scaling model of the gradient sync and the 2D embedding exchange (see model.py)."""
