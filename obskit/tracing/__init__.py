"""Tracing: the span pipeline, samplers and propagation."""
