"""Monitoring as code: the dashboard generator and its panel builders (dev tools, not shipped)."""
