"""Renderers: DOT/SVG (graphviz), plain text. One style table in ``style.py``."""
