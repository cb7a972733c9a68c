"""Converters from offline-installable packages (E5S1, GGUF) to standard Hugging Face folders."""
