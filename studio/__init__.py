"""The Gradio studio and the `speech-studio` command line. UI only: no model math here."""
