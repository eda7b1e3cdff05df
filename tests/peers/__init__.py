"""Real test peers: certificates, rsyslog, a plaintext TCP listener, an HEC server.

Everything here listens on 127.0.0.1 only, on free ports, and is made at test
time. See ``fixtures.py`` for the pytest fixtures built on top.
"""
