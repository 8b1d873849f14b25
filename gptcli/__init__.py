"""gptcli: a command-line tool for GPT-style language models."""

__version__ = "0.1.0"
