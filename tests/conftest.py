"""Test configuration: property tests are derandomized under CI (the same examples every run), and
explore new random examples on developers' machines."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# precision="auto" caches its measured verdicts (chainrule.training.precision): in a directory of
# the test session's own, not the user's ~/.cache (subprocesses inherit it)
if not os.environ.get("CHAINRULE_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["CHAINRULE_CACHE_DIR"] = tempfile.mkdtemp(prefix="chainrule-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CHAINRULE_CACHE_DIR"], ignore_errors=True)
