"""Evaluation on labelled test sets: metrics, per-category runs, published numbers.

May import: every wing below it and the facade (detector, pipeline).
"""
