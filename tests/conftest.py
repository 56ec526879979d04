"""Test configuration: property tests are derandomized under CI (the same examples every run), and
explore new random examples on developers' machines."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
