"""digestd: a self-hosted daemon emailing each subscriber a personal digest of new papers."""

__version__ = "0.1.0"
