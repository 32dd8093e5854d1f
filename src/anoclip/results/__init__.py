"""What a run leaves for a person: the crash-safe result folder, overlays, the HTML report.

May import: the base modules, data and decide.
"""
