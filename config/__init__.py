"""Configuration: the typed settings (:mod:`config.settings`) and the Celery app (:mod:`config.celery_app`)."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
