import os
import sys

# wsraw (tests/conformance) holds the raw-socket helpers the suites share.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))


def pytest_configure(config):
    config.addinivalue_line("markers", "args(*flags): extra wshub flags for the test")
