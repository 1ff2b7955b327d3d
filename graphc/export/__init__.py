"""Writes graphs in other tools' formats: ONNX (onnx.py) and Graphviz DOT pictures (dot.py)."""
