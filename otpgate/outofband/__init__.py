"""Codes and scratch lists sent to users by e-mail and SMS (config, senders, masking)."""
