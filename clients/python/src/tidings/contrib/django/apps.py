"""The app config: registers the system checks."""

from django.apps import AppConfig


class TidingsConfig(AppConfig):
    """``tidings.contrib.django`` in INSTALLED_APPS."""

    name = "tidings.contrib.django"
    label = "tidings"
    verbose_name = "Tidings"

    def ready(self) -> None:
        from django.core import checks

        from . import checks as tidings_checks

        checks.register(tidings_checks.check_settings)
        checks.register(tidings_checks.check_urls, checks.Tags.urls)
