"""m6rec: open-domain recommendation with multi-domain pretraining and text-aware items."""

__version__ = "0.1.0"
