"""The etcd fixtures (``etcd``, ``etcd_cluster``, ``unique_prefix``) live in tests/conftest.py,
shared with tests/e2e; see tests/etcd_fixture.py for the servers themselves."""
