"""Detour's data plane: an OpenAI-compatible reliability gateway for LLM calls."""

__version__ = "0.1.0"
