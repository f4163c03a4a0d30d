"""Hugging Face Space entry point (README front matter: app_file: app.py).

Locally, prefer `make studio` or `speech-studio serve`.
"""

from studio.app import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
