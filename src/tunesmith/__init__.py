"""tunesmith: from a pile of examples to a fine-tuned LLM you can trust."""

__version__ = "0.1.0"
