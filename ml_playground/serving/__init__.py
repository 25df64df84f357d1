"""Serving a trained model: an OpenAI-compatible HTTP API, its engine and a web page."""
