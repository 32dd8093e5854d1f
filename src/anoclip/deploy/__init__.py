"""Deployment: ONNX / OpenVINO export, the exported-file Engine, the Ray runner.

May import: every wing below it and the facade (detector, pipeline).
"""
