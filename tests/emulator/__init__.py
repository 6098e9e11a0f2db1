"""Tests of service/emulator: the bundled StackOne emulator."""
