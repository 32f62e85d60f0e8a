"""Engines behind one Protocol (see base.py)."""
