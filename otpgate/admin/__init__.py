"""Administration: enrollment and token management, shared by the CLI and the demo."""
