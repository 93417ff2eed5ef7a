"""Shared utilities under the layers: hardware set-up, atomic files, disk paths, import paths, one-line errors."""
