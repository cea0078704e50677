"""The training demo (``PYTHONPATH=bench python -m demo``); see ``run.py``."""
