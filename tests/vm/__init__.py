"""Tests that boot Debian's stock kernel in QEMU (marker ``vm``); see tests/vm/harness.py."""
