"""puma-ray: migrate per-user LLM soft prompts to a new foundation model (PUMA) on Ray."""

__version__ = "0.1.0"
