# Minimal shim for setup.py-based tools; all metadata lives in pyproject.toml.
from setuptools import setup

setup()
