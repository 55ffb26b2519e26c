"""The one authentication pipeline behind every front end, and its pure rules."""
