"""Simulation stage: the task registry and suites, scripted-expert demo collection, and (later) eval."""

from sim.rendering import configure_gl

configure_gl()
