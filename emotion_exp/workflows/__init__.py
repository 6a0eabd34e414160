"""Workflows: the stages run together as nested runs of one parent (the study, the sweep, the learning curve)."""
