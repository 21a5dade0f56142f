"""Fake upstreams on real loopback sockets, for Trooper's tests and for its users' tests."""
