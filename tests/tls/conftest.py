def pytest_configure(config):
    config.addinivalue_line("markers", "args(*flags): extra wshub flags for the test")
