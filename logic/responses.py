"""Old name of :mod:`logic.actions` (automated actions); a re-export until ``logic/alerts.py`` imports the new one."""

from logic.actions import *  # noqa: F403
