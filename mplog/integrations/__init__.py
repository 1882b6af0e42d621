"""Integrations with frameworks that create the processes: gunicorn, celery.

Each lives in its own module and imports its framework only when imported itself.
"""
