"""The tool-calling edit/test loop against an OpenAI-compatible chat-completions endpoint."""
