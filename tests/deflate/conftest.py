"""pytest fixtures for the permessage-deflate tests: the integration suite's
own (tests/integration/conftest.py: `wshub` starts a server per test on
127.0.0.1:0 and at teardown checks it is alive, answers a fresh client,
has no fd leak and exits 0 on SIGTERM), loaded under another module name so
the two conftest modules don't collide, plus the raw-socket helpers of
tests/conformance (wsraw, pmdraw)."""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))

_spec = importlib.util.spec_from_file_location(
    "wsh_integration_conftest", os.path.join(HERE, "..", "integration", "conftest.py"))
_integ = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integ)

wshub = _integ.wshub  # the fixture
run_async = _integ.run_async
ws_uri = _integ.ws_uri
MULT = _integ.MULT
