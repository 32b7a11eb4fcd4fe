"""The reproduction grid behind reproduce.py: plan, launchers, report."""
