"""Asynchronous access to the directory: connections, identity resolution, OTP state."""
