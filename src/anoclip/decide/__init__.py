"""Decisions: thresholds from known-good images or the unlabeled set, and their use.

May import: the base modules and data.
"""
