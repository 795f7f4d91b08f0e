"""Prometheus metrics: obskit's registry and its exposition."""
