"""The quota scheduler: Chromium's qscheduler algorithm (qslib), ported and generalised."""
