"""bertcli: from raw text to your own pretrained BERT."""

__version__ = "0.1.0"
